"""FleetMetrics: the observer feeds the exact series the dashboards query."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest
from fedvc_client.link import ClientTls, TlsFileError
from fedvc_server.metrics import FleetMetrics, MetricsError
from prometheus_client import generate_latest

from fedvc.coordinator import RoundReport
from fedvc.objects import ObjectId


def sample(metrics: FleetMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_observer_events_move_the_right_series() -> None:
    now = [1000.0]
    metrics = FleetMetrics(clock=lambda: now[0])
    assert sample(metrics, "fedvc_updates_rejected_total", reason="norm") == 0
    metrics.admitted(None)  # type: ignore[arg-type]
    metrics.rejected("norm")
    metrics.rejected("norm")
    metrics.count_bytes("in", 100)
    metrics.count_bytes("out", 7)
    metrics.client_seen("a")
    metrics.client_seen("b")
    report = RoundReport(3, ObjectId("a" * 64), ObjectId("b" * 64), (), {}, {}, 0.25, 12.0, 0.5)
    metrics.round_closed(report)
    assert sample(metrics, "fedvc_updates_admitted_total") == 1
    assert sample(metrics, "fedvc_updates_rejected_total", reason="norm") == 2
    assert sample(metrics, "fedvc_bytes_received_total") == 100
    assert sample(metrics, "fedvc_bytes_sent_total") == 7
    assert sample(metrics, "fedvc_rounds_completed_total") == 1
    assert sample(metrics, "fedvc_round_duration_seconds_sum") == 12.0
    assert sample(metrics, "fedvc_aggregation_seconds_count") == 1
    assert sample(metrics, "fedvc_interference_score") == 0.25
    assert sample(metrics, "fedvc_round") == 4
    bounded = FleetMetrics(rounds=3)
    bounded.round_closed(report)  # the last of 3 rounds: no round 4 is in progress
    assert sample(bounded, "fedvc_round") == 3
    assert sample(metrics, "fedvc_clients_connected") == 2
    now[0] += 61
    metrics.client_seen("a")
    assert sample(metrics, "fedvc_clients_connected") == 1


def test_two_servers_in_one_process_keep_separate_counts() -> None:
    first, second = FleetMetrics(), FleetMetrics()
    first.rejected("replay")
    assert sample(second, "fedvc_updates_rejected_total", reason="replay") == 0
    assert b"fedvc_updates_rejected_total" in generate_latest(first.registry)


def test_metrics_are_served_over_http() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    metrics = FleetMetrics()
    metrics.rejected("structure")
    metrics.serve(port, "127.0.0.1")
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'fedvc_updates_rejected_total{reason="structure"} 1.0' in body
    with pytest.raises(MetricsError, match=f"cannot serve /metrics on 127.0.0.1:{port}"):
        FleetMetrics().serve(port, "127.0.0.1")  # taken: a clear error, not a traceback
    metrics.close()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)


def test_a_taken_grpc_port_is_a_clear_error() -> None:
    from fedvc_server.servicer import FleetServicer, ListenError, start_server

    servicer = FleetServicer(None)  # type: ignore[arg-type]  # never called
    first = start_server(servicer)
    try:
        with pytest.raises(ListenError, match=f"cannot listen on 127.0.0.1:{first.port}"):
            start_server(servicer, f"127.0.0.1:{first.port}")
    finally:
        first.stop(0)


def test_an_unreadable_client_tls_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TlsFileError, match="cannot read the CA certificate"):
        ClientTls.from_files(tmp_path / "missing-ca.pem")
