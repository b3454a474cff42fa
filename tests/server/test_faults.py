"""Faults with real processes: a server and four fedvc-client processes on loopback; one
client is killed mid-round, the server is killed with SIGKILL mid-run and restarted. The
run finishes, no round is lost or repeated, and the whole history verifies and replays."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from fedvc.replay import replay_history
from fedvc.repo import Repository
from fedvc.round import ROUND_KEY
from fedvc.signing import SigningKey
from fedvc.tensor_files import save_params
from fedvc.trust import TrustStore
from fedvc.verify import verify

pytestmark = pytest.mark.slow

ROUNDS = 4
CLIENTS = 4
HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_setup(root: Path, port: int) -> Path:
    (root / "clients").mkdir(parents=True)
    SigningKey.generate().save(root / "server.key")
    for i in range(CLIENTS):
        key = SigningKey.generate()
        key.save(root / f"client-{i}.key")
        (root / "clients" / f"client-{i}.pub").write_bytes(key.public_key.to_pem())
    save_params({"w": np.zeros((64, 64), np.float32)}, root / "initial.safetensors")
    config = root / "server.toml"
    config.write_text(
        f'[server]\naddress = "127.0.0.1:{port}"\nrepository = "repo"\nkey = "server.key"\n'
        'trusted_keys = "clients"\nmetrics_port = 0\n'
        '[model]\ninitial = "initial.safetensors"\n'
        f"[rounds]\ncount = {ROUNDS}\nmin_clients = 2\nmax_clients = {CLIENTS}\n"
        "deadline_seconds = 4\n"
    )
    return config


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
    return env


def start_server(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "fedvc_server", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def start_client(root: Path, i: int, port: int) -> subprocess.Popen[bytes]:
    with open(root / f"client-{i}.log", "ab") as out:
        return subprocess.Popen(
            [
                sys.executable, "-m", "fedvc_client",
                "--server", f"127.0.0.1:{port}",
                "--key", str(root / f"client-{i}.key"),
                "--task", "slow_task:task",
                "--task-arg", f"delta={0.1 * (i + 1)}",
                "--task-arg", "seconds=0.6",
                "--task-arg", f"marks={root}",
                "--task-arg", f"name=client-{i}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=environment(),
        )  # fmt: skip


def merged_rounds(repo_dir: Path) -> int:
    """The round the tip of main closed (0 before the first), read as another process."""
    if not (repo_dir / "fedvc.db").exists() and not (repo_dir / ".fedvc").exists():
        return 0
    repo = Repository.open(repo_dir)
    try:
        tip = repo.refs.get_ref("refs/heads/main")
        if tip is None:
            return 0
        number = repo.get_commit(tip).metadata.get(ROUND_KEY)
        return number if isinstance(number, int) else 0
    finally:
        repo.close()


def wait_for(
    condition: Callable[[], bool],
    what: str,
    server: subprocess.Popen[bytes],
    log: Path,
    timeout: float = 60.0,
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if server.poll() is not None:
            raise AssertionError(f"the server exited while waiting for {what}:\n{log.read_text()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}:\n{log.read_text()}")
        time.sleep(0.1)


def test_killed_client_and_killed_server_lose_and_repeat_no_round(tmp_path: Path) -> None:
    port = free_port()
    config = write_setup(tmp_path, port)
    repo_dir = tmp_path / "repo"
    server = start_server(config, tmp_path / "server.log")
    clients = [start_client(tmp_path, i, port) for i in range(CLIENTS)]
    try:
        log = tmp_path / "server.log"
        started = tmp_path / "client-0-round-2"  # client 0 is training round 2
        wait_for(started.exists, "client 0 to start round 2", server, log)
        clients[0].send_signal(signal.SIGKILL)
        wait_for(lambda: merged_rounds(repo_dir) >= 2, "round 2 to close", server, log)
        third = [tmp_path / f"client-{i}-round-3" for i in range(1, CLIENTS)]
        wait_for(lambda: any(m.exists() for m in third), "round 3 to start", server, log)
        server.send_signal(signal.SIGKILL)
        server.wait(timeout=10)
        assert merged_rounds(repo_dir) in (2, 3)
        time.sleep(1.0)  # the clients find the server gone and keep retrying
        server = start_server(config, tmp_path / "server.log")
        assert server.wait(timeout=120) == 0
        for client in clients[1:]:
            assert client.wait(timeout=30) == 0
    finally:
        for process in [server, *clients]:
            if process.poll() is None:
                process.kill()
                process.wait()

    repo = Repository.open(repo_dir)
    merges = [c for _, c in repo.log("main", first_parent=True) if len(c.parents) > 1]
    assert [m.metadata[ROUND_KEY] for m in merges] == list(range(ROUNDS, 0, -1))
    for merge in merges:
        assert len(merge.parents) - 1 >= 2  # at least the minimum number of updates
    assert len(merges[-2].parents) - 1 == CLIENTS - 1  # round 2 closed without the dead client
    trust = TrustStore.from_paths([tmp_path / "clients"]).with_key(
        SigningKey.load(tmp_path / "server.key").public_key
    )
    assert verify(repo, "main", trust=trust).ok
    assert all(r.ok for r in replay_history(repo, "main"))
    log = (tmp_path / "server.log").read_text()
    assert log.count("round 1: merged") == 1 and f"round {ROUNDS}: merged" in log


def test_sigterm_stops_the_server_cleanly(tmp_path: Path) -> None:
    port = free_port()
    config = write_setup(tmp_path, port)
    log = tmp_path / "server.log"
    server = start_server(config, log)
    try:
        wait_for(lambda: "serving" in log.read_text(), "the server to listen", server, log)
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=20) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert "stopped in round 1; start again to continue from main" in log.read_text()
    assert verify(Repository.open(tmp_path / "repo"), "main").ok  # closed, not torn
