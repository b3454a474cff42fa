"""Server credentials for TLS and mutual TLS, from PEM files an operator already has.

With ``client_ca`` the server demands a client certificate signed by that CA
(``require_client_auth``): a device without one cannot even complete the handshake, so
it never reaches the Fleet service. Certificates say which machines may connect; which
updates count is decided separately, by the client keys that sign commits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc  # type: ignore[import-untyped,unused-ignore]

from fedvc.errors import FedvcError


class TlsConfigError(FedvcError):
    """A certificate or key file that cannot be used."""


def server_credentials(
    private_key: bytes, certificate_chain: bytes, *, client_ca: bytes | None = None
) -> Any:
    """``grpc.ServerCredentials`` for one key pair; mutual TLS when ``client_ca`` is given."""
    for name, pem in (("private key", private_key), ("certificate chain", certificate_chain)):
        if b"-----BEGIN " not in pem:
            raise TlsConfigError(f"the server {name} is not PEM: pass the file's contents")
    return grpc.ssl_server_credentials(
        [(private_key, certificate_chain)],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def load_server_credentials(
    key_file: str | Path, cert_file: str | Path, client_ca_file: str | Path | None = None
) -> Any:
    """``server_credentials`` from PEM files (``client_ca_file``: mutual TLS)."""
    return server_credentials(
        _read(key_file, "server private key"),
        _read(cert_file, "server certificate"),
        client_ca=_read(client_ca_file, "client CA certificate") if client_ca_file else None,
    )


def _read(path: str | Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise TlsConfigError(f"cannot read the {what} {path}: {exc.strerror}") from None
