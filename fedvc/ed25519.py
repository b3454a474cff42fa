"""Edwards25519 point checks: which 32-byte strings are usable Ed25519 public keys.

OpenSSL accepts any 32 bytes as an Ed25519 public key. fedvc checks the encoding itself so
that a ``PublicKey`` is always a canonical encoding of a curve point (one key, one key id)
and never a small-order point, for which anyone can forge signatures without a private
key. Pure integer arithmetic, no dependencies.

References:
    Josefsson, Liusvaara, "Edwards-Curve Digital Signature Algorithm (EdDSA)", RFC 8032,
    sections 5.1.3 (decoding) and 5.1.4 (point addition).
"""

from __future__ import annotations

from functools import lru_cache

_P = 2**255 - 19
_D = -121665 * pow(121666, -1, _P) % _P
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)

_Point = tuple[int, int, int, int]  # extended coordinates (X, Y, Z, T), x = X/Z, y = Y/Z


def _point_add(a: _Point, b: _Point) -> _Point:
    """Complete addition on edwards25519 (RFC 8032, section 5.1.4); also doubles."""
    x1, y1, z1, t1 = a
    x2, y2, z2, t2 = b
    aa = (y1 - x1) * (y2 - x2) % _P
    bb = (y1 + x1) * (y2 + x2) % _P
    cc = 2 * t1 * t2 * _D % _P
    dd = 2 * z1 * z2 % _P
    e, f, g, h = bb - aa, dd - cc, dd + cc, bb + aa
    return (e * f % _P, g * h % _P, f * g % _P, e * h % _P)


@lru_cache(maxsize=4096)  # pure Python and slow; a fleet's few keys are checked every round
def point_problem(raw: bytes) -> str | None:
    """Why ``raw`` is not a usable Ed25519 public key, or None if it is (RFC 8032, 5.1.3)."""
    y = int.from_bytes(raw, "little")
    sign = y >> 255
    y &= (1 << 255) - 1
    if y >= _P:
        return "its y coordinate is not reduced modulo 2^255 - 19 (a non-canonical encoding)"
    x2 = (y * y - 1) * pow(_D * y * y + 1, -1, _P) % _P
    if x2 == 0 and sign:
        return "it encodes x = 0 with the sign bit set (a non-canonical encoding)"
    x = pow(x2, (_P + 3) // 8, _P)
    if (x * x - x2) % _P:
        x = x * _SQRT_M1 % _P
    if (x * x - x2) % _P:
        return "it is not a point on the Ed25519 curve"
    if x & 1 != sign:
        x = _P - x
    point: _Point = (x, y, 1, x * y % _P)
    for _ in range(3):  # multiply by the cofactor 8
        point = _point_add(point, point)
    px, py, pz, _pt = point
    if px % _P == 0 and (py - pz) % _P == 0:
        return "it is a small-order point, for which signatures can be forged without a key"
    return None
