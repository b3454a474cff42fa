"""Ed25519 keys, signatures, key files and the set of keys a repository trusts.

Why Ed25519: signatures are small (64 bytes), keys are small (32 bytes), verification is
fast, and signing is *deterministic* (RFC 8032): the same key and the same message always
give the same signature bytes. A signed commit embeds its signature, so with a randomized
scheme (ECDSA, RSA-PSS) signing the same commit twice would give two different commit
ids; with Ed25519 the same inputs give the same signed commit and so the same id.

Why a key id is the first 8 bytes of sha256 over the raw 32-byte public key: people need a
short, stable name for a key in logs, errors and trust listings. Hashing the raw key (not a
PEM or DER wrapping, whose bytes depend on the encoder) makes the id a function of the key
alone, and ``PublicKey`` only accepts canonical point encodings, so one key has exactly one
id. 64 bits is plenty to tell a handful of participants apart; it is a *name*, never a
security check: trust decisions compare whole public keys.

Keys sign bytes handed in by the caller; ``sign_commit`` and ``commit_signature_valid``
apply them to a commit's canonical signing bytes (``Commit.signing_bytes``). It is the only
fedvc module that imports ``cryptography``, so the rest of the code depends on the small
API here and not on a third-party library's.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NewType

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa, x448, x25519

from fedvc.ed25519 import point_problem
from fedvc.errors import FedvcError
from fedvc.objects import Commit

KeyId = NewType("KeyId", str)
"""16 lowercase hex characters: the first 8 bytes of sha256(raw 32-byte public key)."""

PUBLIC_KEY_SIZE = 32
SEED_SIZE = 32
SIGNATURE_SIZE = 64
KEY_FILE_SUFFIXES = (".pub", ".pem", ".key")
"""Files in a trust directory that are read as keys; anything else there is ignored."""
MAX_KEY_FILE_SIZE = 64 * 1024
"""A key file is a few hundred bytes; refuse to slurp a large file named by mistake."""

_HEX_KEY = re.compile(r"[0-9a-f]{64}")
_PEM_LABEL = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----")
_GENERATE_HINT = "generate one with SigningKey.generate() or `openssl genpkey -algorithm ed25519`"


class SigningError(FedvcError):
    """A key, a signature or a trust set is not what fedvc can use."""


class KeyFileError(SigningError):
    """A key file cannot be read or written as asked: missing, malformed, encrypted, wrong type."""


# --- public keys ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PublicKey:
    """An Ed25519 public key: 32 raw bytes, always a canonical, usable curve point.

    Equality and hashing compare the raw bytes, so public keys work as set members and dict
    keys (``TrustStore`` relies on this).
    """

    raw: bytes

    def __post_init__(self) -> None:
        if isinstance(self.raw, (bytearray, memoryview)):
            object.__setattr__(self, "raw", bytes(self.raw))
        if not isinstance(self.raw, bytes):
            raise SigningError(
                f"an Ed25519 public key is {PUBLIC_KEY_SIZE} bytes, got {type(self.raw).__name__}"
            )
        if len(self.raw) != PUBLIC_KEY_SIZE:
            raise SigningError(
                f"an Ed25519 public key is {PUBLIC_KEY_SIZE} bytes, got {len(self.raw)} bytes"
            )
        problem = point_problem(self.raw)
        if problem is not None:
            raise SigningError(f"{self.raw.hex()} is not a valid Ed25519 public key: {problem}")

    def __repr__(self) -> str:
        return f"PublicKey({self.hex()!r})"

    def hex(self) -> str:
        """The raw key as 64 lowercase hex characters, the one spelling fedvc writes."""
        return self.raw.hex()

    @classmethod
    def from_hex(cls, text: str) -> PublicKey:
        """Parse 64 lowercase hex characters (as written by ``hex()``) into a key.

        Only the lowercase spelling is accepted so that a key written into a commit, a trust
        file or a log has exactly one textual form and can be compared as text.
        """
        if not isinstance(text, str):
            raise SigningError(f"a public key in hex must be a string, got {type(text).__name__}")
        if not _HEX_KEY.fullmatch(text):
            shown = repr(text) if len(text) <= 80 else f"{text[:40]!r}..."
            if len(text) != 2 * PUBLIC_KEY_SIZE:
                found = f"{len(text)} characters"
            elif re.fullmatch(r"[0-9a-fA-F]{64}", text):
                found = "uppercase hex digits; fedvc accepts only lowercase hex (its one spelling)"
            else:
                found = "characters other than 0-9 and a-f"
            raise SigningError(
                f"public key {shown} is not 64 lowercase hex characters "
                f"({PUBLIC_KEY_SIZE} bytes): found {found}"
            )
        return cls(bytes.fromhex(text))

    @property
    def key_id(self) -> KeyId:
        """The key's short name: first 8 bytes of sha256(raw), as 16 lowercase hex chars."""
        return KeyId(hashlib.sha256(self.raw).digest()[:8].hex())

    def verify(self, signature: bytes, message: bytes) -> bool:
        """True iff ``signature`` is this key's Ed25519 signature of ``message``.

        Any wrong signature, including one of the wrong length, gives False: callers decide
        what a bad signature means, and never see a ``cryptography`` exception.
        """
        if len(signature) != SIGNATURE_SIZE:
            return False
        try:
            self._crypto_key().verify(bytes(signature), bytes(message))
        except InvalidSignature:
            return False
        return True

    def to_pem(self) -> bytes:
        """The key as a SubjectPublicKeyInfo PEM block ('-----BEGIN PUBLIC KEY-----')."""
        return self._crypto_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def _crypto_key(self) -> ed25519.Ed25519PublicKey:
        return ed25519.Ed25519PublicKey.from_public_bytes(self.raw)

    @classmethod
    def _from_crypto(cls, key: ed25519.Ed25519PublicKey) -> PublicKey:
        return cls(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


# --- signing keys --------------------------------------------------------------------------


class SigningKey:
    """An Ed25519 private key. Its repr shows only the key id, never private material."""

    __slots__ = ("_key", "_public")

    def __init__(self, key: ed25519.Ed25519PrivateKey) -> None:
        """Wrap a ``cryptography`` key; use ``generate``, ``from_seed`` or ``load`` instead."""
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise SigningError(f"expected an Ed25519 private key, got {type(key).__name__}")
        self._key = key
        self._public = PublicKey._from_crypto(key.public_key())

    def __repr__(self) -> str:
        return f"SigningKey(key_id={self.key_id!r})"

    @classmethod
    def generate(cls) -> SigningKey:
        """A new random key from the operating system's secure random source."""
        return cls(ed25519.Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> SigningKey:
        """The key whose 32-byte RFC 8032 private seed is ``seed`` (for deterministic tests)."""
        if not isinstance(seed, (bytes, bytearray, memoryview)) or len(seed) != SEED_SIZE:
            found = (
                f"{len(seed)} bytes"
                if isinstance(seed, (bytes, bytearray, memoryview))
                else type(seed).__name__
            )
            raise SigningError(f"an Ed25519 seed is {SEED_SIZE} bytes, got {found}")
        return cls(ed25519.Ed25519PrivateKey.from_private_bytes(bytes(seed)))

    @property
    def public_key(self) -> PublicKey:
        """The public half, safe to share and to put in trust stores."""
        return self._public

    @property
    def key_id(self) -> KeyId:
        """The key id of the public half."""
        return self._public.key_id

    def sign(self, message: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``message``; the same message gives the same bytes."""
        return self._key.sign(bytes(message))

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        """Write the private key to ``path`` and the public key to ``<path>.pub``.

        The private key is unencrypted PKCS8 PEM, created with mode 0o600 from the start (no
        window in which it is readable by others); the public key is SubjectPublicKeyInfo PEM
        with mode 0o644. Existing files are kept unless ``overwrite`` is true, in which case
        each file is replaced atomically.
        """
        private_path = Path(path)
        public_path = Path(os.fspath(path) + ".pub")
        if not overwrite:
            for existing in (private_path, public_path):
                if os.path.lexists(existing):
                    raise KeyFileError(_exists_message(existing))
        private_pem = self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        _write_key_file(private_path, private_pem, 0o600, overwrite)
        try:
            _write_key_file(public_path, self._public.to_pem(), 0o644, overwrite)
        except KeyFileError:
            if not overwrite:  # we created the private file just now: don't leave half a pair
                with contextlib.suppress(OSError):
                    private_path.unlink()
            raise

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SigningKey:
        """Read an unencrypted PKCS8 PEM Ed25519 private key, as written by ``save``."""
        return cls(_load_private_pem(Path(path), _read_key_file(Path(path))))


def load_public_key(path: str | os.PathLike[str]) -> PublicKey:
    """Read a public key from a public-key PEM, a private-key PEM, or a 64-hex-char file.

    A private key file is accepted so that a participant can point at the one key file it
    has; only the public half is kept.
    """
    file = Path(path)
    data = _read_key_file(file)
    label = _pem_label(data)
    if label is None:
        try:
            text = data.decode("ascii").strip()
        except UnicodeDecodeError:
            text = None
        if text is not None and re.fullmatch(r"[0-9a-fA-F]+", text):
            try:
                return PublicKey.from_hex(text)
            except SigningError as exc:
                raise KeyFileError(f"key file {file}: {exc}") from None
        raise KeyFileError(
            f"key file {file} holds {_describe(data)}: expected an Ed25519 public key as PEM "
            "('-----BEGIN PUBLIC KEY-----'), a private key PEM, or 64 lowercase hex characters"
        )
    if label == "PUBLIC KEY":
        try:
            key = serialization.load_pem_public_key(data)
        except (ValueError, TypeError) as exc:
            raise KeyFileError(
                f"key file {file} has a malformed PUBLIC KEY block: {_short(exc)}"
            ) from None
        except Exception as exc:  # cryptography's UnsupportedAlgorithm and friends
            raise KeyFileError(
                f"key file {file} holds a public key fedvc cannot read: {_short(exc)}"
            ) from None
        if not isinstance(key, ed25519.Ed25519PublicKey):
            raise KeyFileError(
                f"key file {file} holds {_key_kind(key)} public key: fedvc uses Ed25519 keys only"
            )
        try:
            return PublicKey._from_crypto(key)
        except SigningError as exc:
            raise KeyFileError(f"key file {file}: {exc}") from None
    return PublicKey._from_crypto(_load_private_pem(file, data).public_key())


# --- key file helpers ----------------------------------------------------------------------


def _exists_message(path: Path) -> str:
    return (
        f"key file {path} already exists: refusing to overwrite a key "
        "(pass overwrite=True to replace it, or choose another path)"
    )


def _write_key_file(path: Path, data: bytes, mode: int, overwrite: bool) -> None:
    """Write ``data`` to a new file created with ``mode``, or atomically replace ``path``.

    The file is created by ``os.open`` with its final mode, never chmod-ed afterwards, so it
    is never readable more widely than ``mode`` allows, even for an instant.
    """
    target = path
    if overwrite:  # write a fresh private temp file next to it, then rename over the old one
        target = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise KeyFileError(_exists_message(path)) from None
    except OSError as exc:
        raise KeyFileError(f"cannot create key file {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if overwrite:
            os.replace(target, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            target.unlink()
        raise KeyFileError(f"cannot write key file {path}: {exc.strerror}") from None


def _read_key_file(path: Path) -> bytes:
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_KEY_FILE_SIZE + 1)
    except FileNotFoundError:
        raise KeyFileError(f"key file {path} does not exist") from None
    except IsADirectoryError:
        raise KeyFileError(f"key file {path} is a directory, expected a key file") from None
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc.strerror}") from None
    if len(data) > MAX_KEY_FILE_SIZE:
        raise KeyFileError(
            f"key file {path} is larger than {MAX_KEY_FILE_SIZE} bytes: "
            "a key file is a few hundred bytes; is this the right file?"
        )
    return data


def _pem_label(data: bytes) -> str | None:
    match = _PEM_LABEL.search(data)
    return match.group(1).decode("ascii") if match else None


def _load_private_pem(path: Path, data: bytes) -> ed25519.Ed25519PrivateKey:
    """Parse ``data`` (read from ``path``) as an unencrypted PKCS8 Ed25519 private key."""
    expected = "expected an unencrypted Ed25519 private key in PEM ('-----BEGIN PRIVATE KEY-----')"
    label = _pem_label(data)
    if label is None:
        raise KeyFileError(f"key file {path} holds {_describe(data)}: {expected}")
    if label == "PUBLIC KEY":
        raise KeyFileError(
            f"key file {path} holds a public key, not a private key: signing needs the private "
            "key file (the .pub file next to it is the public half)"
        )
    if label == "ENCRYPTED PRIVATE KEY":
        raise KeyFileError(
            f"key file {path} holds a password-protected private key: fedvc reads unencrypted "
            "PKCS8 keys only; protect the file with permissions (mode 0600) instead"
        )
    if label == "OPENSSH PRIVATE KEY":
        raise KeyFileError(
            f"key file {path} holds an OpenSSH-format private key: {expected}; {_GENERATE_HINT}"
        )
    if not label.endswith("PRIVATE KEY"):
        raise KeyFileError(f"key file {path} holds a PEM {label!r} block: {expected}")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:  # cryptography: "Password was not given but private key is encrypted"
        raise KeyFileError(
            f"key file {path} holds an encrypted private key: fedvc reads unencrypted keys only"
        ) from None
    except ValueError as exc:
        raise KeyFileError(
            f"key file {path} has a malformed {label} block ({_short(exc)}): {expected}"
        ) from None
    except Exception as exc:  # cryptography's UnsupportedAlgorithm and friends
        raise KeyFileError(
            f"key file {path} holds a private key fedvc cannot read ({_short(exc)}): {expected}"
        ) from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise KeyFileError(
            f"key file {path} holds {_key_kind(key)} private key: fedvc signs with Ed25519 "
            f"only; {_GENERATE_HINT}"
        )
    return key


def _key_kind(key: object) -> str:
    """'an RSA', 'an Ed448', ... for messages about keys of the wrong algorithm."""
    kinds: list[tuple[tuple[type[object], ...], str]] = [
        ((rsa.RSAPrivateKey, rsa.RSAPublicKey), "an RSA"),
        ((ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey), "an elliptic-curve (ECDSA)"),
        ((ed448.Ed448PrivateKey, ed448.Ed448PublicKey), "an Ed448"),
        ((x25519.X25519PrivateKey, x25519.X25519PublicKey), "an X25519 (key exchange)"),
        ((x448.X448PrivateKey, x448.X448PublicKey), "an X448 (key exchange)"),
        ((dsa.DSAPrivateKey, dsa.DSAPublicKey), "a DSA"),
    ]
    for classes, kind in kinds:
        if isinstance(key, classes):
            return kind
    return f"a {type(key).__name__}"


def _describe(data: bytes) -> str:
    """A short, safe description of what a non-key file holds (never its contents)."""
    if not data.strip():
        return "nothing (the file is empty)"
    if data.lstrip().startswith((b"ssh-ed25519 ", b"ssh-rsa ", b"ecdsa-sha2-")):
        return "an OpenSSH public key line"
    return f"{len(data)} bytes that are not a PEM block"


def _short(exc: Exception) -> str:
    """The first sentence of a ``cryptography`` error, which can run to several lines."""
    return str(exc).split(". ")[0].strip().rstrip(".") or type(exc).__name__


def sign_commit(commit: Commit, key: SigningKey) -> Commit:
    """Return ``commit`` authored and signed by ``key`` (any previous signature replaced)."""
    unsigned = replace(commit, author=key.public_key.hex(), signature=None)
    return replace(unsigned, signature=key.sign(unsigned.signing_bytes()).hex())


def commit_signature_valid(commit: Commit) -> bool:
    """Whether ``commit`` carries a signature that its author key made over its content."""
    if commit.signature is None or commit.author is None:
        return False
    try:
        author = PublicKey.from_hex(commit.author)
    except SigningError:
        return False
    return author.verify(bytes.fromhex(commit.signature), commit.signing_bytes())
