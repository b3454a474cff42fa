"""Signed calls: every Fleet call proves that its client holds a trusted key.

An update commit is signed, so the door knows who sent it. The calls around it (asking
for work, listing, downloading and uploading objects) named a client only by a claimed
key id, so anyone who could reach the port without mutual TLS could take a trusted
client's place in a round or fill the server's store with objects. Each call therefore
carries, as gRPC metadata, the client's public key, the time, and the key's Ed25519
signature of the method, the key and the time; the server serves the call only when the
signature holds, the key is trusted, and the time is within ``MAX_SKEW`` seconds of its
own clock. This is what Flower's node authentication does for SuperNodes.

A captured credential opens the same method for the same client until it expires, so
fleets that cross untrusted networks should still use TLS, which keeps it from being
captured. The metadata carries no secret: the signature covers one method for a few
minutes, and the private key never leaves the client.
"""

from __future__ import annotations

from collections.abc import Iterable

from fedvc.errors import FedvcError
from fedvc.round import UpdateRejected
from fedvc.signing import PublicKey, SigningError, SigningKey
from fedvc.trust import TrustStore

KEY = "fedvc-key"
"""Metadata key of the client's public key, 64 hex digits."""
TIME = "fedvc-time"
"""Metadata key of the time the credential was made, whole seconds since the epoch."""
SIGNATURE = "fedvc-signature"
"""Metadata key of the Ed25519 signature of ``call_message(...)``, 128 hex digits."""
MAX_SKEW = 300.0
"""Seconds a credential's time may differ from the server's clock, either way."""

Metadata = Iterable[tuple[str, str | bytes]]


class CallRejected(FedvcError):
    """A call without valid credentials: missing, malformed, expired or forged."""


def call_message(method: str, public_key: str, issued_at: int) -> bytes:
    """What a client signs for one call: the protocol, the method, its key and the time."""
    return f"fedvc-call-v1\n{method}\n{public_key}\n{issued_at}".encode()


def credentials(signer: SigningKey, method: str, now: float) -> tuple[tuple[str, str], ...]:
    """The metadata that signs a call to ``method`` at time ``now`` (seconds)."""
    public_key = signer.public_key.hex()
    issued_at = int(now)
    signature = signer.sign(call_message(method, public_key, issued_at))
    return ((KEY, public_key), (TIME, str(issued_at)), (SIGNATURE, signature.hex()))


def authenticate(
    metadata: Metadata,
    method: str,
    trust: TrustStore,
    now: float,
    *,
    max_skew: float = MAX_SKEW,
) -> PublicKey:
    """The trusted key that signed this call to ``method``.

    Raises ``CallRejected`` for credentials that are missing, malformed, expired or do
    not verify, and ``UpdateRejected("unknown_key")`` for a valid signature by a key the
    server does not trust (the same answer as an update signed by it).
    """
    given = {key: value for key, value in metadata if key in (KEY, TIME, SIGNATURE)}
    absent = [key for key in (KEY, TIME, SIGNATURE) if not isinstance(given.get(key), str)]
    if absent:
        raise CallRejected(
            f"{method}: the call carries no {', '.join(absent)} metadata; this server serves "
            "only calls signed by a client key (fedvc_client's GrpcLink(..., signer=KEY) "
            "signs every call)"
        )
    text_key, text_time, text_signature = (str(given[k]) for k in (KEY, TIME, SIGNATURE))
    try:
        key = PublicKey.from_hex(text_key)
    except SigningError as exc:
        raise CallRejected(f"{method}: metadata {KEY} is not a public key: {exc}") from None
    if not text_time.isdigit() or len(text_time) > 12:
        raise CallRejected(
            f"{method}: metadata {TIME} must be whole seconds since the epoch, got "
            f"{text_time[:20]!r}"
        )
    issued_at = int(text_time)
    if abs(now - issued_at) > max_skew:
        raise CallRejected(
            f"{method}: the call was signed at {issued_at}, {now - issued_at:+.0f} s from the "
            f"server's clock; calls are served within {max_skew:.0f} s of it: set the "
            "client's clock right (NTP)"
        )
    try:
        signature = bytes.fromhex(text_signature)
    except ValueError:
        signature = b""
    if not key.verify(signature, call_message(method, text_key, issued_at)):
        raise CallRejected(
            f"{method}: metadata {SIGNATURE} is not key {key.key_id}'s signature of this call"
        )
    if not trust.trusts(key):
        raise UpdateRejected(
            "unknown_key",
            f"key {key.key_id} is not among the coordinator's trusted client keys; ask the "
            "operator to add its .pub file",
        )
    return key
