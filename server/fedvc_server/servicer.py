"""The Fleet service: a thin gRPC face on a ``Coordinator``.

Each method decodes the request with ``fedvc.wire``, calls the coordinator method of the
same name, and encodes the answer; nothing here knows about rounds. Requests arrive as raw
bytes (no gRPC deserializer): a request that is not protobuf then becomes
INVALID_ARGUMENT with a message saying so, where gRPC's own deserializer would answer
INTERNAL, and every byte in and out is counted exactly.

Given the coordinator's trust store, the servicer serves only signed calls
(``fedvc.call_auth``): each must carry a trusted client key's signature of the method and
the time.

Failures map to gRPC status codes, with details that say what to do and trailing metadata
a client can act on (``fedvc-reason``, ``fedvc-object``):

- a call without valid credentials (none, malformed, expired, forged): UNAUTHENTICATED;
- a call signed by a key the coordinator does not trust, or asking for work under
  another client's key: PERMISSION_DENIED;
- a malformed, out-of-range or truncated request: INVALID_ARGUMENT;
- an object whose bytes do not hash to its id: DATA_LOSS (nothing of it is stored);
- an object the coordinator lacks: NOT_FOUND.

A rejected submission is not an error: ``Submit`` answers with a Verdict that says why.
The standard ``grpc.health.v1.Health`` service runs beside Fleet (``start_server``).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc  # type: ignore[import-untyped,unused-ignore]
from grpc_health.v1 import (  # type: ignore[import-untyped,unused-ignore]
    health,
    health_pb2,
    health_pb2_grpc,
)

from fedvc import call_auth, transfer, wire
from fedvc.errors import FedvcError
from fedvc.objects import MalformedObjectError
from fedvc.repo import RevisionError
from fedvc.round import RoundError, UpdateRejected
from fedvc.signing import PublicKey
from fedvc.store.base import CorruptObjectError, ObjectNotFoundError
from fedvc.transport import CoordinatorLink, WireObject
from fedvc.trust import TrustStore

log = logging.getLogger(__name__)
T = TypeVar("T")

ByteCallback = Callable[[str, int], None]
"""``on_bytes(direction, n)``: ``direction`` is "in" (received) or "out" (sent), ``n`` the
serialized message bytes; ``FleetMetrics.count_bytes`` has this shape."""


def status_of(error: FedvcError) -> Any:
    """The gRPC status code that tells a client what kind of failure ``error`` is."""
    if isinstance(error, UpdateRejected):
        denied = error.reason in ("unknown_key", "wrong_key")
        return grpc.StatusCode.PERMISSION_DENIED if denied else grpc.StatusCode.FAILED_PRECONDITION
    if isinstance(error, call_auth.CallRejected):
        return grpc.StatusCode.UNAUTHENTICATED
    if isinstance(error, CorruptObjectError):
        return grpc.StatusCode.DATA_LOSS
    if isinstance(error, ObjectNotFoundError):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(error, (wire.WireError, MalformedObjectError, RevisionError)):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(error, RoundError):
        return grpc.StatusCode.FAILED_PRECONDITION
    return grpc.StatusCode.INTERNAL


class FleetServicer:
    """Serves ``coordinator`` (anything with the ``CoordinatorLink`` methods) over gRPC.

    With ``trust`` (the coordinator's client keys) every call must be signed by one of
    them (``fedvc.call_auth``), checked against ``clock``. ``bytes_received`` /
    ``bytes_sent`` count serialized message bytes; ``errors`` counts failed calls by
    ``"Method:CODE"``; ``on_bytes`` hears every message as it passes, ``on_error`` every
    failed call (method, status code name).
    """

    def __init__(
        self,
        coordinator: CoordinatorLink,
        *,
        on_bytes: ByteCallback | None = None,
        chunk_size: int = wire.CHUNK_SIZE,
        max_object_size: int = transfer.MAX_OBJECT_SIZE,
        on_error: Callable[[str, str], None] | None = None,
        trust: TrustStore | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.coordinator = coordinator
        self.trust = trust
        self.clock = clock
        self.on_bytes = on_bytes
        self.on_error = on_error
        self.chunk_size = chunk_size
        self.max_object_size = max_object_size
        self.bytes_received = 0
        self.bytes_sent = 0
        self.errors: Counter[str] = Counter()
        self._lock = threading.Lock()

    def handler(self) -> Any:
        """The ``grpc.GenericRpcHandler`` that routes Fleet's methods here."""
        return grpc.method_handlers_generic_handler(
            wire.SERVICE,
            {
                "NextRound": grpc.unary_unary_rpc_method_handler(self.next_round),
                "ListObjects": grpc.unary_stream_rpc_method_handler(self.list_objects),
                "GetObjects": grpc.unary_stream_rpc_method_handler(self.get_objects),
                "Missing": grpc.unary_unary_rpc_method_handler(self.missing),
                "PutObjects": grpc.stream_unary_rpc_method_handler(self.put_objects),
                "Submit": grpc.unary_unary_rpc_method_handler(self.submit),
            },
        )

    # -- the methods: decode, call, encode -------------------------------------------------

    def next_round(self, request: bytes, context: Any) -> bytes:
        with self._guard("NextRound", context) as caller:
            key_id = wire.decode_next_round_request(self._in(request))
            if caller is not None and caller.key_id != key_id:
                raise UpdateRejected(
                    "wrong_key",
                    f"the call is signed by key {caller.key_id} but asks for work as key "
                    f"{key_id}; a client asks for work under its own key",
                )
            return self._out(wire.encode_offer(self.coordinator.next_round(key_id)))

    def list_objects(self, request: bytes, context: Any) -> Iterator[bytes]:
        with self._guard("ListObjects", context):
            ids = self.coordinator.list_objects(wire.decode_list_request(self._in(request)))
        for batch in wire.batches(ids):
            yield self._out(wire.encode_ids(batch))

    def get_objects(self, request: bytes, context: Any) -> Iterator[bytes]:
        with self._guard("GetObjects", context):
            ids = wire.decode_ids(self._in(request), "GetObjects ids")
            for obj in read_ahead(self.coordinator.get_objects(ids)):
                for message in wire.encode_chunks(obj, self.chunk_size):
                    yield self._out(message)

    def missing(self, request: bytes, context: Any) -> bytes:
        with self._guard("Missing", context):
            ids = wire.decode_ids(self._in(request), "Missing ids")
            return self._out(wire.encode_ids(self.coordinator.missing(ids)))

    def put_objects(self, requests: Iterable[bytes], context: Any) -> bytes:
        counts = [0, 0]

        def arriving() -> Iterator[WireObject]:
            messages = (self._in(message) for message in requests)
            for obj in transfer.decode_objects(messages, self.max_object_size):
                counts[0] += 1
                counts[1] += len(obj.payload)
                yield obj

        with self._guard("PutObjects", context):
            self.coordinator.put_objects(arriving())
        return self._out(wire.encode_put_summary(wire.PutSummary(counts[0], counts[1])))

    def submit(self, request: bytes, context: Any) -> bytes:
        with self._guard("Submit", context):
            round_number, commit = wire.decode_submit(self._in(request))
            return self._out(wire.encode_verdict(self.coordinator.submit(round_number, commit)))

    # -- counting and failing ------------------------------------------------------------

    def _in(self, message: bytes) -> bytes:
        self._count("in", len(message))
        return message

    def _out(self, message: bytes) -> bytes:
        self._count("out", len(message))
        return message

    def _count(self, direction: str, n: int) -> None:
        with self._lock:
            if direction == "out":
                self.bytes_sent += n
            else:
                self.bytes_received += n
        if self.on_bytes is not None:
            self.on_bytes(direction, n)

    def _failed(self, method: str, code: str) -> None:
        with self._lock:
            self.errors[f"{method}:{code}"] += 1
        if self.on_error is not None:
            self.on_error(method, code)

    @contextmanager
    def _guard(self, method: str, context: Any) -> Iterator[PublicKey | None]:
        """Check the call's credentials (with a trust store) and give the key that signed
        it; turn a fedvc error into the gRPC status that describes it, and count it."""
        try:
            caller = None
            if self.trust is not None:
                metadata = context.invocation_metadata()
                caller = call_auth.authenticate(metadata, method, self.trust, self.clock())
            yield caller
        except FedvcError as error:
            code = status_of(error)
            self._failed(method, code.name)
            metadata = []
            details = str(error)
            if isinstance(error, UpdateRejected):
                metadata.append((wire.REASON_KEY, error.reason))
                details = error.detail
            oid = getattr(error, "oid", None)
            if isinstance(oid, str) and oid.isascii():
                metadata.append((wire.OBJECT_KEY, oid))
            log.info("%s from %s failed: %s: %s", method, context.peer(), code.name, details)
            context.set_trailing_metadata(tuple(metadata))
            context.abort(code, details)
        except Exception:  # a bug: gRPC answers UNKNOWN; count it and keep the traceback
            self._failed(method, "UNKNOWN")
            log.exception("%s from %s failed unexpectedly", method, context.peer())
            raise


def read_ahead(items: Iterator[T]) -> Iterator[T]:
    """``items``, each next one fetched by a worker thread while the caller sends this one.

    Reading an object from the store hashes all of it (a tenth of a second for 100 MB);
    done in line, the stream would stall that long before every object. The worker stops
    when the consumer does (a client that went away), and its errors reach the consumer.
    """
    handoff: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=1)
    stopped = threading.Event()

    def offer(kind: str, value: Any) -> None:
        while not stopped.is_set():
            try:
                handoff.put((kind, value), timeout=0.1)
                return
            except queue.Full:
                continue

    def work() -> None:
        try:
            for item in items:
                offer("item", item)
                if stopped.is_set():
                    return
            offer("end", None)
        except BaseException as error:  # handed to the consumer, raised there
            offer("error", error)

    threading.Thread(target=work, name="fedvc-read-ahead", daemon=True).start()
    try:
        while True:
            kind, value = handoff.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stopped.set()


# -- running a server --------------------------------------------------------------------------


@dataclass
class RunningServer:
    """A started gRPC server with Fleet and Health on ``port``."""

    server: Any
    port: int
    servicer: FleetServicer
    health: Any

    def stop(self, grace: float | None = 1.0) -> None:
        """Report NOT_SERVING to health checks, then stop, letting calls finish for ``grace`` s."""
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()


SERVER_OPTIONS = (
    *wire.MESSAGE_SIZE_OPTIONS,
    # gRPC lets a second server bind a port another already serves (SO_REUSEPORT), and
    # the two then split the fleet's calls between two histories: refuse it instead
    ("grpc.so_reuseport", 0),
)


class ListenError(FedvcError):
    """An address the server cannot listen on."""


def start_server(
    servicer: FleetServicer,
    address: str = "127.0.0.1:0",
    *,
    credentials: Any = None,
    max_workers: int = 32,
) -> RunningServer:
    """Serve Fleet and Health on ``address`` (port 0: any free port); TLS with ``credentials``.

    ``max_workers`` bounds the calls served at once; more wait their turn, which is what
    a fleet asking for work all at once needs (no call is refused for lack of a thread).
    """
    server = grpc.server(futures.ThreadPoolExecutor(max_workers), options=SERVER_OPTIONS)
    server.add_generic_rpc_handlers((servicer.handler(),))
    checks = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checks, server)
    try:  # grpcio raises RuntimeError for an address it cannot bind, older ones return 0
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError:
        port = 0
    if port == 0:
        raise ListenError(
            f"cannot listen on {address}: the port is taken or the address is not this "
            "machine's; stop what holds it or set [server] address to another HOST:PORT"
        )
    server.start()
    for service in ("", wire.SERVICE):
        checks.set(service, health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(server, int(port), servicer, checks)
