"""Tests for fedvc.signing: Ed25519 keys, signatures, key files and trust stores.

Foreign key files (RSA, Ed448, EC, encrypted, OpenSSH) are hard-coded PEM fixtures rather
than generated here, so that fedvc.signing stays the only code that imports cryptography.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedvc.errors import FedvcError
from fedvc.signing import (
    KeyFileError,
    PublicKey,
    SigningError,
    SigningKey,
    load_public_key,
)
from fedvc.trust import TrustStore

GOLDEN_SEED = bytes(range(32))
GOLDEN_PUBLIC_HEX = "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8"
GOLDEN_KEY_ID = "56475aa75463474c"
GOLDEN_SIGNATURE_HEX = (
    "ae3b9822c91c5c42017397113cafb9478996d50160aa51b744a1ff93c9cac830"
    "fcd493e459300ca165aabcc0bef07416a92c40f69684ddb1f04ac6a07a4beb07"
)

ED448_PRIVATE_PEM = b"""-----BEGIN PRIVATE KEY-----
MEcCAQAwBQYDK2VxBDsEOY8qeKHjzle2FeskPJsScxxzr4I7Hqir0KJVZx8Fcpvp
1fXdIoCg+qwLKxj3kVx+JuAe/OqK+2xg1Q==
-----END PRIVATE KEY-----
"""

ED448_PUBLIC_PEM = b"""-----BEGIN PUBLIC KEY-----
MEMwBQYDK2VxAzoAyBlPgKeMYUbHG2wN/890uI852avSWGllp8wZ8eIpEqJHoXbW
DW7dRa8btgLouY4e8h196GAwD+eA
-----END PUBLIC KEY-----
"""

EC_P256_PRIVATE_PEM = b"""-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg19XV3q8dEF+MbNEv
u6Rz6WVJF1yWZ+Z+u13RLou+6cChRANCAARBUEAskTeqIfQ+Ljjtlk8zb6HWxtRe
jiXmfVwZFyp/1XSsH8hUDD1G/d02VVrOTx/x9gqGHk23aPBlJyS8QmSl
-----END PRIVATE KEY-----
"""

RSA_1024_PRIVATE_PEM = b"""-----BEGIN PRIVATE KEY-----
MIICdQIBADANBgkqhkiG9w0BAQEFAASCAl8wggJbAgEAAoGBALoTNtYtZ4NLiaER
7wqErf2zSsCi0aOSWOfm6uew2Vzx/qkrAsZRnTlMiYODTuEBSwKm+H7qS1/zTNX4
H2yCXYneLqZ7embi4mv6CRchs2u5boIXIlHaIeeVrjuFadOuHA5ddhZ4wXSwiEEc
B6Lm4fseBCh1KG8UMU0B7H8KsBdxAgMBAAECgYAs5Zf0o633QxGpOI+J5SuqLEmc
I20b36LuCYyibMx1nbpJjSQ1P9oEyk/f2J3+snYr5KfOz69yLl1av2ytnOL+iKbr
wcM3uESjaekkcRqmH4VnL6wATc6AudX7Xkzw8WTrFGRzmjTu8x1bRyFYcrEhqSMe
3lGU3fhsJJ0SRqHmNQJBAOIORbVDwc5r0LB94sDmJBUE5bneeweL0sqAiii4mMUV
3lbuCdbUDPUw79xGPUUsu9iL+D1dhZ6FcWMhXVn26CcCQQDSuSpJWLL6hbuC2DYC
XmVxnlPeKRQqqKAczykkOCWl/KT8zy9QutPb2BR7qWEIiFD+hAXHZluVrDZT7lxy
HeqnAkApUMZ4zLt9SMNJnph0/RsXJGAASqNdy7ZpAHk/3A0/6DFM3hC6TONZZOpR
7hyAqh5jA6IJRTCIuobwwUZYjQH9AkASl0+JxQ+VVrMiahzpvJZKneNcWFd1JAds
Q0Kn9WQs7stHmqfcAX+rh7bW6iyragtrSQ6RdxBhdh4c7YyubMFFAkAce20U16lL
8+dfYL5SXsCj6xmWUc/yA5DlK7cO7mcFI/HVvccX0EsdM7LweqitTsmtWOju1LaT
phCd2uRDmCL7
-----END PRIVATE KEY-----
"""

# The golden key, PKCS8-encrypted with the password "pw".
ENCRYPTED_PRIVATE_PEM = b"""-----BEGIN ENCRYPTED PRIVATE KEY-----
MIGjMF8GCSqGSIb3DQEFDTBSMDEGCSqGSIb3DQEFDDAkBBA2yEFiY6xr1mf715DB
sp3vAgIIADAMBggqhkiG9w0CCQUAMB0GCWCGSAFlAwQBKgQQ226xmp/H4fOgl4SQ
81jXawRAk5C7mtExOSxQR24QDlx83LHWz2Q/8yDz/R9uRFSDi3JK3QrhCPSaahSL
Nbr7gQ204y5qUPr6HWw2M2B5qMbQyA==
-----END ENCRYPTED PRIVATE KEY-----
"""

# The golden key in OpenSSH's own format.
OPENSSH_PRIVATE_PEM = b"""-----BEGIN OPENSSH PRIVATE KEY-----
b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtz
c2gtZWQyNTUxOQAAACADoQe/884Qvh1w3RjnS8CZZ+TWMJulDV8d3IZkElUxuAAA
AIhABb0uQAW9LgAAAAtzc2gtZWQyNTUxOQAAACADoQe/884Qvh1w3RjnS8CZZ+TW
MJulDV8d3IZkElUxuAAAAEAAAQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0e
HwOhB7/zzhC+HXDdGOdLwJln5NYwm6UNXx3chmQSVTG4AAAAAAECAwQF
-----END OPENSSH PRIVATE KEY-----
"""

posix_only = pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")


def key(n: int) -> SigningKey:
    """A deterministic key per small integer, distinct from the golden key."""
    return SigningKey.from_seed(bytes([n + 100]) * 32)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_zero() -> Iterator[None]:
    """With umask 0 any mode we see is the one the code asked for, not the umask's doing."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


# --- golden values and signatures ------------------------------------------------------------


def test_golden_key_encoding_is_fixed() -> None:
    signer = SigningKey.from_seed(GOLDEN_SEED)
    assert signer.public_key.hex() == GOLDEN_PUBLIC_HEX
    assert signer.public_key.raw == bytes.fromhex(GOLDEN_PUBLIC_HEX)
    assert signer.key_id == GOLDEN_KEY_ID
    assert signer.public_key.key_id == GOLDEN_KEY_ID
    assert signer.sign(b"fedvc").hex() == GOLDEN_SIGNATURE_HEX


def test_key_id_is_truncated_sha256_of_raw_public_key() -> None:
    public = key(1).public_key
    assert public.key_id == hashlib.sha256(public.raw).hexdigest()[:16]
    assert len(public.key_id) == 16
    assert public.key_id == public.key_id.lower()


def test_sign_verify_round_trip() -> None:
    signer = key(1)
    signature = signer.sign(b"weights")
    assert len(signature) == 64
    assert signer.public_key.verify(signature, b"weights")


def test_tampered_message_fails() -> None:
    signer = key(1)
    signature = signer.sign(b"weights")
    assert not signer.public_key.verify(signature, b"weightz")
    assert not signer.public_key.verify(signature, b"weights\x00")
    assert not signer.public_key.verify(signature, b"")


@pytest.mark.parametrize("position", [0, 1, 31, 32, 33, 63])
def test_tampered_signature_fails(position: int) -> None:
    signer = key(1)
    signature = bytearray(signer.sign(b"weights"))
    signature[position] ^= 0x01
    assert not signer.public_key.verify(bytes(signature), b"weights")


@pytest.mark.parametrize("length", [0, 1, 63, 65, 128])
def test_wrong_length_signature_is_false_not_an_error(length: int) -> None:
    signature = key(1).sign(b"weights")
    wrong = (signature * 3)[:length]
    assert key(1).public_key.verify(wrong, b"weights") is False


def test_other_keys_signature_fails() -> None:
    signature = key(1).sign(b"weights")
    assert not key(2).public_key.verify(signature, b"weights")


def test_signatures_are_deterministic() -> None:
    first = SigningKey.from_seed(bytes([7]) * 32)
    second = SigningKey.from_seed(bytes([7]) * 32)
    assert first.sign(b"commit") == second.sign(b"commit")
    assert first.sign(b"commit") == first.sign(b"commit")
    assert first.sign(b"commit") != first.sign(b"commit2")


def test_generated_keys_differ_and_work() -> None:
    a, b = SigningKey.generate(), SigningKey.generate()
    assert a.public_key != b.public_key
    assert a.public_key.verify(a.sign(b"m"), b"m")


@pytest.mark.parametrize("seed", [b"", bytes(31), bytes(33), "00" * 32])
def test_from_seed_rejects_wrong_seed(seed: object) -> None:
    with pytest.raises(SigningError, match="32 bytes"):
        SigningKey.from_seed(seed)  # type: ignore[arg-type]


def test_repr_shows_no_private_material(tmp_path: Path) -> None:
    seed = bytes(range(100, 132))
    signer = SigningKey.from_seed(seed)
    signer.save(tmp_path / "me.key")
    pem_body = (tmp_path / "me.key").read_text().splitlines()[1]
    text = repr(signer) + str(signer)
    assert signer.key_id in text
    assert seed.hex() not in text
    assert pem_body not in text


# --- PublicKey ---------------------------------------------------------------------------------


def test_public_key_hex_round_trip_and_equality() -> None:
    public = key(1).public_key
    again = PublicKey.from_hex(public.hex())
    assert again == public
    assert hash(again) == hash(public)
    assert public.hex() == public.raw.hex()
    assert public.hex() in repr(public)


@pytest.mark.parametrize("length", [0, 31, 33])
def test_public_key_raw_must_be_32_bytes(length: int) -> None:
    with pytest.raises(SigningError, match=f"32 bytes, got {length} bytes"):
        PublicKey(bytes([9]) * length)


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("", "found 0 characters"),
        (GOLDEN_PUBLIC_HEX[:-2], "found 62 characters"),
        (GOLDEN_PUBLIC_HEX + "00", "found 66 characters"),
        (GOLDEN_PUBLIC_HEX.upper(), "accepts only lowercase"),
        (GOLDEN_PUBLIC_HEX[:-1] + "g", "other than 0-9 and a-f"),
        (" " + GOLDEN_PUBLIC_HEX[1:], "other than 0-9 and a-f"),
        (GOLDEN_PUBLIC_HEX + "\n", "found 65 characters"),
    ],
)
def test_from_hex_rejects_non_canonical_text(text: str, found: str) -> None:
    with pytest.raises(SigningError, match="64 lowercase hex") as info:
        PublicKey.from_hex(text)
    assert found in str(info.value)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        # y = p: not reduced
        ("edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f", "non-canonical"),
        # identity point (x = 0) with the sign bit set
        ("0100000000000000000000000000000000000000000000000000000000000080", "non-canonical"),
        # y = 2: no x satisfies the curve equation
        ("0200000000000000000000000000000000000000000000000000000000000000", "not a point"),
        # small-order points: identity, order 2, order 4, order 8
        ("0100000000000000000000000000000000000000000000000000000000000000", "small-order"),
        ("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f", "small-order"),
        ("0000000000000000000000000000000000000000000000000000000000000000", "small-order"),
        ("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05", "small-order"),
        ("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a", "small-order"),
    ],
)
def test_from_hex_rejects_invalid_points(text: str, problem: str) -> None:
    with pytest.raises(SigningError, match="not a valid Ed25519 public key") as info:
        PublicKey.from_hex(text)
    assert problem in str(info.value)
    with pytest.raises(SigningError):
        PublicKey(bytes.fromhex(text))


def test_public_key_to_pem_is_subject_public_key_info(tmp_path: Path) -> None:
    public = key(1).public_key
    pem = public.to_pem()
    assert pem.startswith(b"-----BEGIN PUBLIC KEY-----\n")
    (tmp_path / "k.pub").write_bytes(pem)
    assert load_public_key(tmp_path / "k.pub") == public


@given(signature=st.binary(max_size=200), message=st.binary(max_size=200))
def test_verify_never_raises_on_arbitrary_bytes(signature: bytes, message: bytes) -> None:
    public = SigningKey.from_seed(GOLDEN_SEED).public_key
    assert public.verify(signature, message) is False


@given(seed=st.binary(min_size=32, max_size=32), message=st.binary(max_size=200))
def test_any_seed_signs_and_verifies(seed: bytes, message: bytes) -> None:
    signer = SigningKey.from_seed(seed)
    assert signer.public_key.verify(signer.sign(message), message)
    assert PublicKey.from_hex(signer.public_key.hex()) == signer.public_key


# --- saving and loading ------------------------------------------------------------------------


@posix_only
def test_save_load_round_trip_and_modes(tmp_path: Path, umask_zero: None) -> None:
    signer = SigningKey.from_seed(GOLDEN_SEED)
    path = tmp_path / "me.key"
    signer.save(path)

    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----\n")
    assert mode_of(path) == 0o600
    public_path = tmp_path / "me.key.pub"
    assert public_path.read_bytes() == signer.public_key.to_pem()
    assert mode_of(public_path) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["me.key", "me.key.pub"]

    loaded = SigningKey.load(path)
    assert loaded.public_key == signer.public_key
    assert loaded.sign(b"fedvc").hex() == GOLDEN_SIGNATURE_HEX
    assert SigningKey.load(str(path)).key_id == GOLDEN_KEY_ID


def test_save_refuses_to_overwrite_private_key(tmp_path: Path) -> None:
    path = tmp_path / "me.key"
    key(1).save(path)
    before = path.read_bytes()
    with pytest.raises(KeyFileError, match="already exists") as info:
        key(2).save(path)
    assert str(path) in str(info.value)
    assert "overwrite=True" in str(info.value)
    assert path.read_bytes() == before
    assert SigningKey.load(path).public_key == key(1).public_key


def test_save_refuses_when_only_public_file_exists(tmp_path: Path) -> None:
    (tmp_path / "me.key.pub").write_text("someone else's key")
    with pytest.raises(KeyFileError, match=r"me\.key\.pub already exists"):
        key(1).save(tmp_path / "me.key")
    assert not (tmp_path / "me.key").exists()


@posix_only
def test_save_overwrite_replaces_and_keeps_private_mode(tmp_path: Path, umask_zero: None) -> None:
    path = tmp_path / "me.key"
    path.write_text("old")
    path.chmod(0o644)
    key(1).save(path, overwrite=True)
    assert mode_of(path) == 0o600
    assert SigningKey.load(path).public_key == key(1).public_key
    assert load_public_key(tmp_path / "me.key.pub") == key(1).public_key
    key(2).save(path, overwrite=True)
    assert SigningKey.load(path).public_key == key(2).public_key
    assert sorted(p.name for p in tmp_path.iterdir()) == ["me.key", "me.key.pub"]


def test_save_into_missing_directory_is_key_file_error(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="cannot create key file"):
        key(1).save(tmp_path / "missing" / "me.key")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "empty"),
        (b"not a key at all\n", "not a PEM block"),
        (bytes(range(256)), "not a PEM block"),
        (b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAOh me@host\n", "OpenSSH public key"),
        (ED448_PUBLIC_PEM, "holds a public key, not a private key"),
        (RSA_1024_PRIVATE_PEM, "an RSA private key"),
        (ED448_PRIVATE_PEM, "an Ed448 private key"),
        (EC_P256_PRIVATE_PEM, "elliptic-curve"),
        (ENCRYPTED_PRIVATE_PEM, "password-protected"),
        (OPENSSH_PRIVATE_PEM, "OpenSSH-format"),
        (b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "malformed"),
        (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "'CERTIFICATE'"),
    ],
)
def test_load_rejects_non_ed25519_private_keys(
    tmp_path: Path, content: bytes, expected: str
) -> None:
    path = tmp_path / "bad.key"
    path.write_bytes(content)
    with pytest.raises(KeyFileError) as info:
        SigningKey.load(path)
    message = str(info.value)
    assert str(path) in message
    assert expected in message


def test_load_rejects_public_key_as_private_key(tmp_path: Path) -> None:
    key(1).save(tmp_path / "me.key")
    with pytest.raises(KeyFileError, match="not a private key"):
        SigningKey.load(tmp_path / "me.key.pub")


def test_wrong_algorithm_message_says_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "rsa.key"
    path.write_bytes(RSA_1024_PRIVATE_PEM)
    with pytest.raises(KeyFileError, match="Ed25519 only; generate one"):
        SigningKey.load(path)


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="does not exist") as info:
        SigningKey.load(tmp_path / "nope.key")
    assert "nope.key" in str(info.value)
    assert isinstance(info.value, FedvcError)


def test_load_directory_is_key_file_error(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="is a directory"):
        SigningKey.load(tmp_path)


def test_load_refuses_huge_file(tmp_path: Path) -> None:
    path = tmp_path / "big.key"
    path.write_bytes(b"x" * 100_000)
    with pytest.raises(KeyFileError, match="larger than"):
        SigningKey.load(path)


# --- load_public_key ---------------------------------------------------------------------------


def test_load_public_key_from_pub_private_and_hex(tmp_path: Path) -> None:
    signer = SigningKey.from_seed(GOLDEN_SEED)
    signer.save(tmp_path / "me.key")
    (tmp_path / "me.hex").write_text(f"\n  {GOLDEN_PUBLIC_HEX}\n\n")
    assert load_public_key(tmp_path / "me.key.pub") == signer.public_key
    assert load_public_key(tmp_path / "me.key") == signer.public_key
    assert load_public_key(tmp_path / "me.hex") == signer.public_key
    assert load_public_key(str(tmp_path / "me.hex")).key_id == GOLDEN_KEY_ID


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (GOLDEN_PUBLIC_HEX.upper().encode(), "lowercase"),
        (GOLDEN_PUBLIC_HEX[:20].encode(), "found 20 characters"),
        (b"0100000000000000000000000000000000000000000000000000000000000000", "small-order"),
        (b"hello", "not a PEM block"),
        (b"", "empty"),
        (ED448_PUBLIC_PEM, "an Ed448 public key"),
        (ED448_PRIVATE_PEM, "an Ed448 private key"),
        (ENCRYPTED_PRIVATE_PEM, "password-protected"),
        (b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "malformed"),
    ],
)
def test_load_public_key_rejects_bad_files(tmp_path: Path, content: bytes, expected: str) -> None:
    path = tmp_path / "bad.pub"
    path.write_bytes(content)
    with pytest.raises(KeyFileError) as info:
        load_public_key(path)
    assert str(path) in str(info.value)
    assert expected in str(info.value)


# --- TrustStore --------------------------------------------------------------------------------


def test_trust_store_basics() -> None:
    a, b, c = key(1).public_key, key(2).public_key, key(3).public_key
    store = TrustStore([a, b, a])
    assert len(store) == 2
    assert a in store
    assert b in store
    assert c not in store
    assert set(store) == {a, b}
    assert [k.key_id for k in store] == sorted([a.key_id, b.key_id])
    assert store.key_ids() == frozenset({a.key_id, b.key_id})
    assert store.trusts_key_id(a.key_id)
    assert not store.trusts_key_id(c.key_id)
    assert len(TrustStore()) == 0

    bigger = store.with_key(c)
    assert c in bigger
    assert len(bigger) == 3
    assert c not in store  # the original is unchanged
    assert len(store) == 2


def test_trust_store_from_directory(tmp_path: Path) -> None:
    trust = tmp_path / "trusted"
    trust.mkdir()
    key(1).save(trust / "alice.key")  # alice.key and alice.key.pub: one key, counted once
    (trust / "bob.pub").write_bytes(key(2).public_key.to_pem())
    (trust / "carol.pem").write_bytes(key(3).public_key.to_pem())
    (trust / "README.txt").write_text("not a key, ignored")
    (trust / "nested.pub").mkdir()  # not a regular file, ignored
    (trust / "nested.pub" / "dave.pub").write_bytes(key(4).public_key.to_pem())

    store = TrustStore.from_paths([trust])
    assert set(store) == {key(1).public_key, key(2).public_key, key(3).public_key}
    assert key(4).public_key not in store


def test_trust_store_from_files_and_directories(tmp_path: Path) -> None:
    key(1).save(tmp_path / "a.key")
    (tmp_path / "b.hex").write_text(key(2).public_key.hex())
    folder = tmp_path / "more"
    folder.mkdir()
    (folder / "c.pub").write_bytes(key(3).public_key.to_pem())

    store = TrustStore.from_paths([tmp_path / "a.key.pub", str(tmp_path / "b.hex"), folder])
    assert set(store) == {key(1).public_key, key(2).public_key, key(3).public_key}
    assert set(TrustStore.from_paths(str(folder))) == {key(3).public_key}
    assert len(TrustStore.from_paths([])) == 0


def test_trust_store_empty_directory_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("no keys here")
    with pytest.raises(KeyFileError, match="holds no key files") as info:
        TrustStore.from_paths([tmp_path])
    assert str(tmp_path) in str(info.value)
    assert ".pub" in str(info.value)


def test_trust_store_bad_key_file_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "good.pub").write_bytes(key(1).public_key.to_pem())
    (tmp_path / "broken.pub").write_text("garbage")
    with pytest.raises(KeyFileError, match=r"broken\.pub"):
        TrustStore.from_paths([tmp_path])


def test_trust_store_missing_path(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="does not exist"):
        TrustStore.from_paths([tmp_path / "missing.pub"])


def test_trust_store_trusts_keys_and_bare_key_ids() -> None:
    a, b, c = (SigningKey.from_seed(bytes([i]) * 32).public_key for i in (1, 2, 3))
    store = TrustStore([a], key_ids=[b.key_id])
    assert store.trusts(a) and store.trusts(b) and not store.trusts(c)
    assert store.trusts_key_id(b.key_id) and not store.trusts_key_id(c.key_id)
    assert store.with_key(c).trusts(b) and store.with_key(c).trusts(c)
    assert store.key_ids() == frozenset({a.key_id, b.key_id})  # a coordinator's fleet size
