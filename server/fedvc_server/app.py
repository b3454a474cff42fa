"""A running coordinator: gRPC service, round timer, metrics, progress, clean shutdown.

``FleetServer`` wires the pieces that each do one job: ``bootstrap`` builds the
Coordinator from the config, ``servicer`` serves it over gRPC (with health checking),
``metrics`` exports Prometheus series, and a timer thread ticks the coordinator so a
round closes at its deadline even when no client calls.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

from fedvc.coordinator import Coordinator, RoundObserver, RoundReport, SilentObserver
from fedvc.round import Admitted, RoundError
from fedvc_server.bootstrap import build_coordinator
from fedvc_server.config import ServerConfig
from fedvc_server.metrics import FleetMetrics
from fedvc_server.servicer import FleetServicer, RunningServer, start_server
from fedvc_server.tls import load_server_credentials

TICK_SECONDS = 0.25
"""How often the timer checks deadlines: the resolution of a round's deadline."""

LINGER_SECONDS = 3.0
"""After the last round, how long the server keeps answering so clients hear it is over."""


class Observers:
    """Several ``RoundObserver``s heard as one."""

    def __init__(self, observers: Iterable[RoundObserver]) -> None:
        self.observers = list(observers)

    def client_seen(self, key_id: str) -> None:
        for observer in self.observers:
            observer.client_seen(key_id)

    def admitted(self, update: Admitted) -> None:
        for observer in self.observers:
            observer.admitted(update)

    def rejected(self, reason: str) -> None:
        for observer in self.observers:
            observer.rejected(reason)

    def round_closed(self, report: RoundReport) -> None:
        for observer in self.observers:
            observer.round_closed(report)


class FleetServer:
    """The coordinator a ``ServerConfig`` describes, served until its last round closes."""

    def __init__(self, config: ServerConfig, *, progress: RoundObserver | None = None) -> None:
        self.config = config
        self.metrics = FleetMetrics(rounds=config.rounds)
        observers = [self.metrics] + ([progress] if progress is not None else [])
        self.coordinator: Coordinator = build_coordinator(config, observer=Observers(observers))
        self.servicer = FleetServicer(
            self.coordinator,
            on_bytes=self.metrics.count_bytes,
            on_error=self.metrics.call_failed,
            trust=self.coordinator.trust,
        )
        self.running: RunningServer | None = None
        self._stop = threading.Event()
        self._timer: threading.Thread | None = None
        state = self.coordinator.state
        self.metrics.round.set(state.number if state else config.rounds)

    @property
    def port(self) -> int:
        if self.running is None:
            raise RuntimeError("the server is not started")
        return self.running.port

    def start(self) -> FleetServer:
        """Listen on the configured address, serve metrics, start the round timer."""
        tls = self.config.tls
        try:  # whatever fails (TLS files, a taken port), nothing is left open
            credentials = load_server_credentials(tls.key, tls.cert, tls.client_ca) if tls else None
            self.running = start_server(self.servicer, self.config.address, credentials=credentials)
            if self.config.metrics_port:
                self.metrics.serve(self.config.metrics_port)
        except BaseException:
            self.stop()
            raise
        self._timer = threading.Thread(target=self._tick, name="fedvc-round-timer", daemon=True)
        self._timer.start()
        return self

    def wait(
        self, *, linger: float = LINGER_SECONDS, poll: Callable[[], None] | None = None
    ) -> None:
        """Block until every round is merged (then ``linger`` s more) or ``stop()``.

        Raises ``RoundError`` if a round could not be merged, after stopping the server.
        """
        try:
            while not self._stop.is_set() and not self.coordinator.finished:
                self._stop.wait(TICK_SECONDS)
                if poll is not None:
                    poll()
            if not self._stop.is_set() and self.coordinator.failure is None:
                self._stop.wait(linger)
        finally:
            self.stop()
        if self.coordinator.failure is not None:
            raise RoundError(f"a round could not be merged: {self.coordinator.failure}")

    def interrupt(self) -> None:
        """Ask ``wait()`` to stop the server (safe from a signal handler)."""
        self._stop.set()

    def stop(self) -> None:
        self._stop.set()
        if self._timer is not None and self._timer is not threading.current_thread():
            self._timer.join()
        if self.running is not None:
            self.running.stop()
        self.metrics.close()
        self.coordinator.repo.close()

    def _tick(self) -> None:
        while not self._stop.wait(TICK_SECONDS) and self.coordinator.failure is None:
            self.coordinator.tick()


class ProgressPrinter(SilentObserver):
    """Prints one line per closed round (and per rejection) for a person watching."""

    def __init__(self, write: Callable[[str], None]) -> None:
        self.write = write

    def rejected(self, reason: str) -> None:
        self.write(f"  rejected an update: {reason}")

    def round_closed(self, report: RoundReport) -> None:
        metrics = ", ".join(f"{k} {v:.4g}" for k, v in report.metrics.items())
        score = report.interference_score
        rejected = sum(report.rejected.values())
        self.write(
            f"round {report.number}: merged {len(report.participants)} updates"
            f"{f' ({rejected} rejected)' if rejected else ''} in {report.duration_seconds:.1f} s"
            f" -> {report.commit[:12]}"
            f"{f'; {metrics}' if metrics else ''}"
            f"{f'; interference {score:.3f}' if score is not None else ''}"
        )
