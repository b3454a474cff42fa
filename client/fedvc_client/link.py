"""``GrpcLink``: the participant's ``CoordinatorLink`` over a gRPC channel.

A device's connection comes and goes, and so does a coordinator that is restarted. Every
call that fails with UNAVAILABLE is therefore tried again after an exponentially growing,
jittered pause (``Backoff``), so a fleet that lost its server does not come back in one
synchronized wave; the channel itself reconnects on a schedule capped at the same
maximum, so a restarted server is found again without any help. Other failures are not
retried: they are answers (an unknown key, a damaged object) and raise at once.

Objects move in chunks (``fedvc.wire``): a download interrupted by a lost connection
resumes from the first object not yet received, an upload resends only what the server
still lacks. Messages are raw bytes to gRPC and protobuf to ``fedvc.wire`` alone, so the
link counts bytes on the wire exactly (``bytes_sent``, ``bytes_received``).

Given the participant's key, the link signs every call (``fedvc.call_auth``): a server
serves only calls signed by a client key it trusts.

One link serves one participant (one thread); it holds one channel, closed by ``close``.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc  # type: ignore[import-untyped,unused-ignore]

from fedvc import call_auth, transfer, wire
from fedvc.errors import FedvcError
from fedvc.objects import ObjectId
from fedvc.round import REJECTION_REASONS, UpdateRejected
from fedvc.signing import SigningKey
from fedvc.transport import Offer, Verdict, WireObject

T = TypeVar("T")


class TlsFileError(FedvcError):
    """A certificate or key file the client cannot read."""


class LinkError(FedvcError):
    """A call the coordinator refused or could not answer; ``code`` is the gRPC status."""

    def __init__(self, method: str, code: Any, details: str, oid: str | None = None) -> None:
        self.method, self.code, self.details, self.oid = method, code, details, oid
        hint = _HINTS.get(code.name, "")
        super().__init__(f"{method} failed with {code.name}: {details}{hint}")


_HINTS = {
    "UNAVAILABLE": (
        "; the coordinator could not be reached: check the address, that it is running, "
        "and the TLS settings (a server that demands a client certificate drops clients "
        "without one)"
    ),
    "DEADLINE_EXCEEDED": "; the call took longer than the link's timeout: raise it",
    "UNAUTHENTICATED": (
        "; the server serves only calls signed by a trusted client key: give the link the "
        "client's key (GrpcLink(..., signer=key), fedvc-client --key) and keep its clock "
        "right"
    ),
}


@dataclass(frozen=True)
class Backoff:
    """Pauses between tries: ``initial`` doubling up to ``maximum``, jittered, for at most
    ``give_up_after`` seconds in all (then the last UNAVAILABLE is raised)."""

    initial: float = 0.1
    maximum: float = 5.0
    multiplier: float = 2.0
    give_up_after: float = 600.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        """The pause before try ``attempt + 1``: uniform in [d/2, d] for the capped d."""
        ceiling = min(self.maximum, self.initial * self.multiplier**attempt)
        return rng.uniform(ceiling / 2, ceiling)


@dataclass(frozen=True)
class ClientTls:
    """TLS to the coordinator: trust ``root_certificates``; mutual TLS with a key and chain."""

    root_certificates: bytes
    private_key: bytes | None = None
    certificate_chain: bytes | None = None

    @classmethod
    def from_files(
        cls,
        ca_file: str | Path,
        key_file: str | Path | None = None,
        cert_file: str | Path | None = None,
    ) -> ClientTls:
        def read(path: str | Path, what: str) -> bytes:
            try:
                return Path(path).read_bytes()
            except OSError as exc:
                raise TlsFileError(f"cannot read the {what} {path}: {exc.strerror}") from None

        key = read(key_file, "client private key") if key_file else None
        cert = read(cert_file, "client certificate") if cert_file else None
        return cls(read(ca_file, "CA certificate"), key, cert)

    def credentials(self) -> Any:
        return grpc.ssl_channel_credentials(
            self.root_certificates, self.private_key, self.certificate_chain
        )


class GrpcLink:
    """A ``CoordinatorLink`` to the Fleet service at ``target`` (``host:port``).

    ``signer`` is the client's key, which signs every call; ``timeout`` bounds each unary
    call (seconds; object streams are unbounded, as a model may take long to move);
    ``sleep``, ``clock`` (for pauses), ``wall_clock`` (for credentials) and ``rng`` are
    injected for tests.
    """

    def __init__(
        self,
        target: str,
        *,
        tls: ClientTls | None = None,
        signer: SigningKey | None = None,
        backoff: Backoff | None = None,
        timeout: float | None = 60.0,
        chunk_size: int = wire.CHUNK_SIZE,
        max_object_size: int = transfer.MAX_OBJECT_SIZE,
        options: Sequence[tuple[str, Any]] = (),
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.target = target
        self.signer = signer
        self.wall_clock = wall_clock
        self.backoff = backoff or Backoff()
        self.timeout = timeout
        self.chunk_size = chunk_size
        self.max_object_size = max_object_size
        self.sleep, self.clock = sleep, clock
        self.rng = rng or random.Random()
        self.bytes_sent = 0
        self.bytes_received = 0
        self.last_put: wire.PutSummary | None = None
        reconnect_ms = int(self.backoff.maximum * 1000)
        channel_options = [
            *wire.MESSAGE_SIZE_OPTIONS,
            ("grpc.initial_reconnect_backoff_ms", int(self.backoff.initial * 1000)),
            ("grpc.min_reconnect_backoff_ms", int(self.backoff.initial * 1000)),
            ("grpc.max_reconnect_backoff_ms", reconnect_ms),
            *options,
        ]
        if tls is None:
            self.channel = grpc.insecure_channel(target, options=channel_options)
        else:
            self.channel = grpc.secure_channel(target, tls.credentials(), options=channel_options)
        path = wire.method_path
        self._next_round: Any = self.channel.unary_unary(path("NextRound"))
        self._list_objects: Any = self.channel.unary_stream(path("ListObjects"))
        self._get_objects: Any = self.channel.unary_stream(path("GetObjects"))
        self._missing: Any = self.channel.unary_unary(path("Missing"))
        self._put_objects: Any = self.channel.stream_unary(path("PutObjects"))
        self._submit: Any = self.channel.unary_unary(path("Submit"))

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> GrpcLink:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- CoordinatorLink ---------------------------------------------------------------

    def next_round(self, key_id: str) -> Offer:
        request = wire.encode_next_round_request(key_id)
        return wire.decode_offer(self._unary("NextRound", self._next_round, request))

    def list_objects(self, commit: ObjectId) -> list[ObjectId]:
        request = self._sent(wire.encode_list_request(commit))

        def listing() -> list[ObjectId]:
            replies = self._list_objects(
                request, timeout=self.timeout, metadata=self.credentials("ListObjects")
            )
            return [oid for reply in replies for oid in wire.decode_ids(self._received(reply))]

        return self._retrying("ListObjects", listing)

    def get_objects(self, ids: Sequence[ObjectId]) -> Iterator[WireObject]:
        wanted = list(ids)
        done = 0
        attempt, started = 0, self.clock()
        while done < len(wanted):
            batch = wanted[done : done + wire.MAX_IDS_PER_MESSAGE]
            try:
                for obj in self._fetch(batch):
                    yield obj
                    done += 1
                    attempt, started = 0, self.clock()
            except grpc.RpcError as error:
                self._pause_or_raise("GetObjects", error, attempt, started)
                attempt += 1

    def missing(self, ids: Sequence[ObjectId]) -> list[ObjectId]:
        lacking: list[ObjectId] = []
        for batch in wire.batches(list(ids)):
            reply = self._unary("Missing", self._missing, wire.encode_ids(batch))
            lacking += wire.decode_ids(reply, "Missing reply")
        return lacking

    def put_objects(self, objects: Iterable[WireObject]) -> None:
        feed = _Feed(iter(objects))
        resend: list[WireObject] = []
        attempt, started = 0, self.clock()
        while True:
            taken: list[WireObject] = []  # what this try took: resent if the server lacks it
            failure: list[BaseException] = []
            stream = self._chunks(feed.attempt(resend, taken), failure)
            try:
                reply = self._put_objects(
                    stream, timeout=None, metadata=self.credentials("PutObjects")
                )
            except grpc.RpcError as error:
                feed.stop()  # gRPC may still be pulling from the failed try's stream
                if failure:  # our own iterator failed: that, not gRPC's CANCELLED, is news
                    raise failure[0] from None
                self._pause_or_raise("PutObjects", error, attempt, started)
                attempt += 1
                lacking = set(self.missing([obj.oid for obj in taken]))
                resend = [obj for obj in taken if obj.oid in lacking]
                continue
            self.last_put = wire.decode_put_summary(self._received(reply))
            return

    def submit(self, round_number: int, commit: ObjectId) -> Verdict:
        request = wire.encode_submit(round_number, commit)
        return wire.decode_verdict(self._unary("Submit", self._submit, request))

    def credentials(self, method: str) -> tuple[tuple[str, str], ...]:
        """The metadata that signs a call to ``method`` now (none without a signer)."""
        if self.signer is None:
            return ()
        return call_auth.credentials(self.signer, method, self.wall_clock())

    # -- inside ---------------------------------------------------------------------------

    def _fetch(self, batch: Sequence[ObjectId]) -> Iterator[WireObject]:
        request = self._sent(wire.encode_ids(batch))
        metadata = self.credentials("GetObjects")
        replies = (self._received(reply) for reply in self._get_objects(request, metadata=metadata))
        count = 0
        for obj in transfer.decode_objects(replies, self.max_object_size):
            if count >= len(batch) or obj.oid != batch[count]:
                expected = batch[count] if count < len(batch) else "nothing more"
                raise wire.WireError(
                    f"GetObjects: asked for {expected}, received {obj.oid}; the coordinator "
                    "must send the objects asked for, in order"
                )
            count += 1
            yield obj
        if count < len(batch):
            raise wire.WireError(
                f"GetObjects: the coordinator sent {count} of the {len(batch)} objects asked "
                f"for; {batch[count]} and the rest never came"
            )

    def _chunks(
        self, objects: Iterator[WireObject], failure: list[BaseException]
    ) -> Iterator[bytes]:
        try:
            for obj in objects:
                for message in wire.encode_chunks(obj, self.chunk_size):
                    yield self._sent(message)
        except Exception as exc:  # gRPC would hide it behind CANCELLED
            failure.append(exc)
            raise

    def _unary(self, method: str, stub: Any, request: bytes) -> bytes:
        self._sent(request)
        reply: bytes = self._retrying(
            method,
            lambda: stub(request, timeout=self.timeout, metadata=self.credentials(method)),
        )
        return self._received(reply)

    def _retrying(self, method: str, call: Callable[[], T]) -> T:
        attempt, started = 0, self.clock()
        while True:
            try:
                return call()
            except grpc.RpcError as error:
                self._pause_or_raise(method, error, attempt, started)
                attempt += 1

    def _pause_or_raise(self, method: str, error: Any, attempt: int, started: float) -> None:
        """Sleep before the next try of an UNAVAILABLE call; raise anything else as fedvc's."""
        code = error.code()
        pause = self.backoff.delay(attempt, self.rng)
        elapsed = self.clock() - started
        if code == grpc.StatusCode.UNAVAILABLE and elapsed + pause <= self.backoff.give_up_after:
            self.sleep(pause)
            return
        raise _translate(method, error) from None

    def _sent(self, message: bytes) -> bytes:
        self.bytes_sent += len(message)
        return message

    def _received(self, message: bytes) -> bytes:
        self.bytes_received += len(message)
        return message


class _Feed:
    """The objects of one upload, handed to one try at a time.

    gRPC pulls a request stream from a thread of its own and may still be inside it when
    the call has already failed; ``stop`` (under the lock every pull takes) makes sure the
    failed try takes nothing more before the next one starts on the same source.
    """

    def __init__(self, source: Iterator[WireObject]) -> None:
        self._source = source
        self._lock = threading.Lock()
        self._try = 0

    def attempt(self, resend: list[WireObject], taken: list[WireObject]) -> Iterator[WireObject]:
        with self._lock:
            current = self._try
        queued = iter(resend)
        while True:
            with self._lock:
                if self._try != current:
                    return
                obj = next(queued, None) or next(self._source, None)
                if obj is None:
                    return
                taken.append(obj)
            yield obj

    def stop(self) -> None:
        with self._lock:
            self._try += 1


def _translate(method: str, error: Any) -> FedvcError:
    """A failed call as the error the in-process coordinator would have raised."""
    trailing = dict(error.trailing_metadata() or ())
    details = error.details() or ""
    reason = trailing.get(wire.REASON_KEY)
    if error.code() == grpc.StatusCode.PERMISSION_DENIED and reason in REJECTION_REASONS:
        return UpdateRejected(reason, details)
    return LinkError(method, error.code(), details, trailing.get(wire.OBJECT_KEY))
