"""Prometheus metrics for a coordinator, fed by its round observer and its servicer.

Each ``FleetMetrics`` owns a registry of its own (not the process-wide default), so
several servers in one process, as in tests, never share or clash over counters.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from fedvc.coordinator import RoundReport
from fedvc.errors import FedvcError
from fedvc.round import REJECTION_REASONS, Admitted

CONNECTED_WINDOW_SECONDS = 60.0
"""A client counts as connected when it called the server within this many seconds."""


class MetricsError(FedvcError):
    """The metrics endpoint cannot be served."""


class FleetMetrics:
    """The counters the issue names, plus a ``RoundObserver`` interface to feed them."""

    def __init__(
        self, *, clock: Callable[[], float] = time.monotonic, rounds: int | None = None
    ) -> None:
        self.registry = CollectorRegistry()
        self._clock = clock
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()
        self._http: Any = None  # the /metrics server, once serve() started it
        r = self.registry
        self.rounds_completed = Counter(
            "fedvc_rounds_completed", "Rounds closed with a merge commit on main", registry=r
        )
        self.round_duration = Histogram(
            "fedvc_round_duration_seconds",
            "From a round's opening to its merge commit",
            buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600),
            registry=r,
        )
        self.clients_connected = Gauge(
            "fedvc_clients_connected",
            f"Clients that called the server in the last {CONNECTED_WINDOW_SECONDS:g} s",
            registry=r,
        )
        self.clients_connected.set_function(self._connected)
        self.updates_admitted = Counter(
            "fedvc_updates_admitted", "Client updates admitted to a round", registry=r
        )
        self.updates_rejected = Counter(
            "fedvc_updates_rejected",
            "Client updates rejected at the door, by reason",
            ["reason"],
            registry=r,
        )
        for reason in REJECTION_REASONS:  # every reason shows up as 0 before it first happens
            self.updates_rejected.labels(reason=reason)
        self.call_errors = Counter(
            "fedvc_call_errors",
            "Fleet calls that failed, by method and gRPC status (UNAUTHENTICATED: unsigned or "
            "badly signed; PERMISSION_DENIED: an untrusted key)",
            ["method", "code"],
            registry=r,
        )
        self.bytes_received = Counter(
            "fedvc_bytes_received", "Payload bytes received from clients", registry=r
        )
        self.bytes_sent = Counter("fedvc_bytes_sent", "Payload bytes sent to clients", registry=r)
        self.aggregation_seconds = Histogram(
            "fedvc_aggregation_seconds",
            "Time to merge a round's updates and write its commit",
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300),
            registry=r,
        )
        self.interference_score = Gauge(
            "fedvc_interference_score", "Interference score of the last round's updates", registry=r
        )
        self.round = Gauge(
            "fedvc_round", "The round in progress (the last one once all are merged)", registry=r
        )
        self._rounds = rounds

    # -- RoundObserver ------------------------------------------------------------------

    def admitted(self, update: Admitted) -> None:
        self.updates_admitted.inc()

    def rejected(self, reason: str) -> None:
        self.updates_rejected.labels(reason=reason).inc()

    def round_closed(self, report: RoundReport) -> None:
        self.rounds_completed.inc()
        self.round_duration.observe(report.duration_seconds)
        self.aggregation_seconds.observe(report.aggregation_seconds)
        if report.interference_score is not None:
            self.interference_score.set(report.interference_score)
        last = self._rounds is not None and report.number >= self._rounds
        self.round.set(report.number if last else report.number + 1)

    # -- fed by the servicer -----------------------------------------------------------

    def client_seen(self, key_id: str) -> None:
        with self._lock:
            self._seen[key_id] = self._clock()

    def call_failed(self, method: str, code: str) -> None:
        self.call_errors.labels(method=method, code=code).inc()

    def count_bytes(self, direction: str, count: int) -> None:
        (self.bytes_received if direction == "in" else self.bytes_sent).inc(count)

    def _connected(self) -> int:
        cutoff = self._clock() - CONNECTED_WINDOW_SECONDS
        with self._lock:
            self._seen = {k: t for k, t in self._seen.items() if t >= cutoff}
            return len(self._seen)

    def serve(self, port: int, address: str = "0.0.0.0") -> None:
        """Expose ``/metrics`` on ``port`` (a daemon thread) until ``close()``."""
        try:
            self._http, _ = start_http_server(port, addr=address, registry=self.registry)
        except OSError as exc:
            raise MetricsError(
                f"cannot serve /metrics on {address}:{port}: {exc.strerror or exc}; set "
                "[server] metrics_port to a free port, or 0 for no metrics"
            ) from None

    def close(self) -> None:
        """Stop serving ``/metrics``."""
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
