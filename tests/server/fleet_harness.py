"""The harness of the gRPC tests (conftest.py makes fixtures of it): a real Fleet over a
real socket, a Coordinator on a disk repository served by gRPC on 127.0.0.1 (port 0),
trusted client keys, a tiny numpy task, and certificates for TLS."""

from __future__ import annotations

import datetime
import ipaddress
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fedvc.coordinator import Coordinator, CoordinatorConfig, RoundLog
from fedvc.merge.fedavg import fedavg
from fedvc.participant import Participant, TrainResult
from fedvc.repo import Repository
from fedvc.round import RoundConfig
from fedvc.signing import SigningKey
from fedvc.trust import TrustStore

if TYPE_CHECKING:  # imported where used, so that other tests here never depend on gRPC
    from fedvc_client.link import ClientTls, GrpcLink
    from fedvc_server.servicer import FleetServicer, RunningServer

PARAMS = {"w": np.zeros(1000, np.float32)}


class Shift:
    """Training that moves every weight by ``delta``."""

    def __init__(self, delta: float) -> None:
        self.delta = delta

    def train(self, params: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> TrainResult:
        return TrainResult(
            {k: v + self.delta for k, v in params.items()}, examples=10, metrics={"loss": 1.0}
        )


@dataclass
class Fleet:
    repo: Repository
    coordinator: Coordinator
    servicer: FleetServicer
    running: RunningServer
    record: RoundLog
    server_key: SigningKey
    keys: list[SigningKey]
    links: list[GrpcLink] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.running.port}"

    def link(
        self,
        *,
        tls: ClientTls | None = None,
        give_up_after: float = 20.0,
        signer: SigningKey | None = None,
    ) -> GrpcLink:
        """A link to the fleet whose calls ``signer`` signs (the first client's key if none
        is given: a trusted key, so that a test reaches what it checks)."""
        from fedvc_client.link import Backoff, GrpcLink

        backoff = Backoff(initial=0.05, maximum=0.5, give_up_after=give_up_after)
        target = f"localhost:{self.running.port}" if tls else self.address
        signer = signer or self.keys[0]
        link = GrpcLink(target, tls=tls, signer=signer, backoff=backoff, timeout=20.0)
        self.links.append(link)
        return link

    def participant(self, key: SigningKey, delta: float = 1.0, **link: Any) -> Participant:
        link.setdefault("signer", key)
        return Participant(self.link(**link), Shift(delta), key, Repository.memory(), sleep=_nap)

    def trust(self) -> TrustStore:
        return TrustStore([self.server_key.public_key, *(k.public_key for k in self.keys)])


def _nap(seconds: float) -> None:
    time.sleep(min(seconds, 0.05))


FleetFactory = Callable[..., Fleet]


def fleet_factory(tmp_path: Path) -> Iterator[FleetFactory]:
    """Builds fleets (``build(rounds=..., clients=...)``) and tears them all down after."""
    made: list[Fleet] = []

    def build(
        *,
        rounds: int = 2,
        min_clients: int = 2,
        clients: int = 2,
        max_norm: float | None = None,
        credentials: Any = None,
    ) -> Fleet:
        repo = Repository.init(tmp_path / f"server{len(made)}")
        server_key = SigningKey.from_seed(bytes([200]) * 32)
        repo.commit_params(PARAMS, "initial model", signer=server_key)
        keys = [SigningKey.from_seed(bytes([i + 1]) * 32) for i in range(clients)]
        record = RoundLog()
        coordinator = Coordinator(
            repo,
            fedavg(),
            trust=TrustStore(k.public_key for k in keys),
            signer=server_key,
            config=CoordinatorConfig(
                rounds=rounds,
                round=RoundConfig(min_clients=min_clients, deadline_seconds=30, max_norm=max_norm),
                retry_seconds=0.05,
            ),
            observer=record,
        )
        from fedvc_server.servicer import FleetServicer, start_server

        servicer = FleetServicer(coordinator, trust=coordinator.trust)
        running = start_server(servicer, credentials=credentials, max_workers=8)
        fleet = Fleet(repo, coordinator, servicer, running, record, server_key, keys)
        made.append(fleet)
        return fleet

    yield build
    for fleet in made:
        for link in fleet.links:
            link.close()
        fleet.running.stop(grace=None)
        fleet.repo.close()


# -- certificates for TLS tests -----------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca: bytes
    server_key: bytes
    server_cert: bytes
    client_key: bytes
    client_cert: bytes


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _issue(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    server: bool = False,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(datetime.datetime(2020, 1, 1))  # naive: UTC
        .not_valid_after(datetime.datetime(2100, 1, 1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_pki() -> Pki:
    """A CA, a server certificate for localhost and a client certificate it signed."""
    pem = serialization.Encoding.PEM
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _issue("fedvc test CA", ca_key, _name("fedvc test CA"), ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _issue("localhost", server_key, ca.subject, ca_key, server=True)
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = _issue("device-1", client_key, ca.subject, ca_key)
    return Pki(
        ca.public_bytes(pem),
        _pem_key(server_key),
        server.public_bytes(pem),
        _pem_key(client_key),
        client.public_bytes(pem),
    )
