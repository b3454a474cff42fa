"""GrpcLink's network behaviour: TLS and mutual TLS, finding a restarted server again,
resuming interrupted transfers, counting bytes, and the health service beside Fleet."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

import grpc
import pytest
from fedvc_client.link import Backoff, ClientTls, GrpcLink, LinkError
from fedvc_server.servicer import start_server
from fedvc_server.tls import server_credentials
from fleet_harness import Fleet, FleetFactory, Pki
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fedvc import wire
from fedvc.round_store import commit_objects
from fedvc.transport import RoundOffer
from fedvc.verify import verify


def test_backoff_grows_jittered_up_to_its_maximum() -> None:
    backoff = Backoff(initial=0.1, maximum=1.0, multiplier=2.0)
    rng = random.Random(0)
    delays = [backoff.delay(attempt, rng) for attempt in range(8)]
    ceilings = [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0, 1.0]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    assert len(set(delays)) == len(delays)  # jittered: a fleet does not retry in lockstep


def test_health_service_reports_serving(fleet: Fleet) -> None:
    check = health_pb2_grpc.HealthStub(fleet.link().channel).Check
    for service in ("", wire.SERVICE):
        reply = check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_bytes_are_counted_on_both_ends(fleet: Fleet) -> None:
    heard: dict[str, int] = {"in": 0, "out": 0}
    fleet.servicer.on_bytes = lambda direction, n: heard.__setitem__(
        direction, heard[direction] + n
    )
    a, b = (fleet.participant(k) for k in fleet.keys)
    for p in (a, b):
        assert p.run(max_rounds=1)[0].verdict.admitted
    links = fleet.links
    assert heard["in"] == fleet.servicer.bytes_received == sum(x.bytes_sent for x in links)
    assert heard["out"] == fleet.servicer.bytes_sent == sum(x.bytes_received for x in links)
    assert fleet.servicer.bytes_sent > 2 * 4000  # each client fetched the 4 kB base blob


def test_mutual_tls_admits_a_client_with_a_certificate(make_fleet: FleetFactory, pki: Pki) -> None:
    credentials = server_credentials(pki.server_key, pki.server_cert, client_ca=pki.ca)
    fleet = make_fleet(credentials=credentials)
    tls = ClientTls(pki.ca, pki.client_key, pki.client_cert)
    for key in fleet.keys:
        [done] = fleet.participant(key, tls=tls).run(max_rounds=1)
        assert done.verdict.admitted
    assert len(fleet.record.reports) == 1
    assert verify(fleet.repo, "main", trust=fleet.trust()).ok


def test_mutual_tls_drops_a_client_without_a_certificate(
    make_fleet: FleetFactory, pki: Pki
) -> None:
    credentials = server_credentials(pki.server_key, pki.server_cert, client_ca=pki.ca)
    fleet = make_fleet(credentials=credentials)
    link = fleet.link(tls=ClientTls(pki.ca), give_up_after=0.5)
    with pytest.raises(LinkError) as caught:
        link.next_round(str(fleet.keys[0].key_id))
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert "client certificate" in str(caught.value)
    assert fleet.coordinator.state is not None and not fleet.coordinator.state.assigned


def test_tls_without_client_certificates(make_fleet: FleetFactory, pki: Pki) -> None:
    fleet = make_fleet(credentials=server_credentials(pki.server_key, pki.server_cert))
    offer = fleet.link(tls=ClientTls(pki.ca)).next_round(str(fleet.keys[0].key_id))
    assert isinstance(offer, RoundOffer) and offer.number == 1
    plain = fleet.link(give_up_after=0.3)  # no TLS at all: the handshake never completes
    with pytest.raises(LinkError, match="UNAVAILABLE"):
        plain.next_round(str(fleet.keys[0].key_id))


def test_a_restarted_server_is_found_again(fleet: Fleet) -> None:
    link = fleet.link()
    offer = link.next_round(str(fleet.keys[0].key_id))
    assert isinstance(offer, RoundOffer)
    pauses: list[float] = []
    link.sleep = lambda seconds: (pauses.append(seconds), time.sleep(seconds))  # type: ignore[func-returns-value]
    port = fleet.running.port
    fleet.running.stop(grace=None)

    def restart() -> None:
        time.sleep(0.4)
        fleet.running = start_server(fleet.servicer, f"127.0.0.1:{port}", max_workers=4)

    thread = threading.Thread(target=restart)
    thread.start()
    try:
        ids = link.list_objects(offer.base)
    finally:
        thread.join()
    assert ids[-1] == offer.base and pauses  # it failed, waited, and got through


class Unavailable(grpc.RpcError):  # type: ignore[misc]
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "connection reset (simulated)"

    def trailing_metadata(self) -> tuple[()]:
        return ()


def test_an_interrupted_download_resumes_after_what_arrived(fleet: Fleet) -> None:
    link = fleet.link()
    offer = link.next_round(str(fleet.keys[0].key_id))
    assert isinstance(offer, RoundOffer)
    ids = link.list_objects(offer.base)
    real, asked = link._get_objects, []

    def flaky(request: bytes, **kwargs: Any) -> Iterator[bytes]:
        asked.append(wire.decode_ids(request))
        replies = real(request, **kwargs)
        yield next(replies)  # the first object (one chunk), then the connection drops
        if len(asked) == 1:
            raise Unavailable()
        yield from replies

    link._get_objects = flaky
    link.sleep = lambda seconds: None
    got = list(link.get_objects(ids))
    assert [o.oid for o in got] == ids and asked == [ids, ids[1:]]


def test_an_interrupted_upload_resends_only_what_the_server_lacks(fleet: Fleet) -> None:
    a = fleet.participant(fleet.keys[0])
    offer = a.link.next_round(a.key_id)
    assert isinstance(offer, RoundOffer)
    commit = a.train(offer)
    link = a.link
    assert isinstance(link, GrpcLink)
    real, streams = link._put_objects, []

    def flaky(messages: Iterable[bytes], **kwargs: Any) -> bytes:
        sent = list(messages)
        streams.append(len(sent))
        if len(streams) == 1:
            real(iter(sent[:1]), **kwargs)  # the first object arrives, then the link drops
            raise Unavailable()
        reply: bytes = real(iter(sent), **kwargs)
        return reply

    link._put_objects = flaky
    link.sleep = lambda seconds: None
    assert a.upload(commit) == 3
    assert streams == [3, 2]  # blob, snapshot, commit; then all but the blob
    ids = commit_objects(a.repo, commit, attached=True)
    assert not fleet.coordinator.missing(ids)
    resent = sum(len(a.repo.objects.get(oid).payload) for oid in ids[1:])  # snapshot, commit
    assert link.last_put == wire.PutSummary(2, resent)
    assert link.submit(offer.number, commit).admitted
