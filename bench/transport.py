"""gRPC transport throughput, sync savings and a concurrent fleet, over loopback.

Prints:
1. a base commit of ``--gb`` GB (``--tensors`` random float32 tensors) fetched by one
   client: MB/s on the wire (objects received and hash-checked by ``GrpcLink``) and end
   to end (``Participant.download`` into a memory repository, which checks and stores);
2. the next commit, with all tensors but one unchanged (90% with 10 tensors), fetched by
   the same client: bytes on the wire as a percentage of the first fetch;
3. ``--clients`` concurrent clients (threads, each with its own ``GrpcLink``, connection,
   ``Participant`` and memory repository) taking part in ``--rounds`` rounds of a small
   model: errors, rounds merged, and the server's peak resident memory.

The coordinator runs in a child process (this script with ``--serve``), so client and
server do not share an interpreter lock and the server's peak memory is its own.

Usage: python bench/transport.py [--gb 1] [--tensors 10] [--clients 100] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np
from fedvc_client.link import Backoff, GrpcLink
from fedvc_server.servicer import FleetServicer, start_server

from fedvc.coordinator import Coordinator, CoordinatorConfig
from fedvc.merge.fedavg import fedavg
from fedvc.objects import ObjectId
from fedvc.participant import Participant, TrainResult
from fedvc.repo import Repository
from fedvc.round import RoundConfig
from fedvc.signing import SigningKey
from fedvc.trust import TrustStore

MB = 1_000_000
SMALL_MODEL = {"dense.weight": (128, 64), "dense.bias": (64,), "out.weight": (64, 10)}
OWN_CONNECTION = (("grpc.use_local_subchannel_pool", 1),)  # one TCP connection per client


class Shift:
    """Training that moves every weight by ``delta`` (the network is what is measured)."""

    def __init__(self, delta: float) -> None:
        self.delta = delta

    def train(self, params: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> TrainResult:
        return TrainResult({k: v + self.delta for k, v in params.items()}, examples=10)


def client_key(index: int) -> SigningKey:
    return SigningKey.from_seed(index.to_bytes(32, "big"))


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# -- the server (child process) ---------------------------------------------------------------


def build_repo(path: Path, mode: str, args: argparse.Namespace, key: SigningKey) -> list[str]:
    """The server's repository: two big commits ("fetch") or one small model ("fleet")."""
    repo = Repository.init(path)
    rng = np.random.default_rng(0)
    if mode == "fleet":
        small = {n: rng.standard_normal(s).astype(np.float32) for n, s in SMALL_MODEL.items()}
        return [repo.commit_params(small, "initial model", signer=key)]
    size = int(args.gb * 1e9 / args.tensors) // 4
    params = {f"t{i}": rng.standard_normal(size, dtype=np.float32) for i in range(args.tensors)}
    first = repo.commit_params(params, "base", signer=key)
    params["t0"] = rng.standard_normal(size, dtype=np.float32)
    second = repo.commit_params(params, "one tensor changed", signer=key)
    repo.close()
    return [first, second]


def serve(mode: str, args: argparse.Namespace) -> None:
    """Run a coordinator until stdin closes, then report the server's figures on stdout."""
    key = SigningKey.from_seed(b"\xff" * 32)
    with tempfile.TemporaryDirectory() as tmp:
        commits = build_repo(Path(tmp), mode, args, key)
        repo = Repository.open(tmp)
        trust = TrustStore(client_key(i).public_key for i in range(max(args.clients, 1)))
        config = CoordinatorConfig(
            rounds=args.rounds, round=RoundConfig(deadline_seconds=600), retry_seconds=0.05
        )
        coordinator = Coordinator(repo, fedavg(), trust=trust, signer=key, config=config)
        servicer = FleetServicer(coordinator, trust=trust)  # every call signed, as in production
        running = start_server(servicer, max_workers=32)
        hello = {"port": running.port, "commits": commits, "cpu": time.process_time()}
        print(json.dumps(hello), flush=True)
        sys.stdin.read()
        running.stop(grace=None)
        report = {
            "peak_rss_mb": peak_rss_mb(),
            "cpu": time.process_time(),
            "bytes_sent": servicer.bytes_sent,
            "bytes_received": servicer.bytes_received,
            "errors": dict(servicer.errors),
            "rounds": len(repo.log("main", first_parent=True)) - 1,
        }
        repo.close()
        print(json.dumps(report), flush=True)


class Server:
    """The child process serving ``mode``; ``finish()`` stops it and returns its report."""

    def __init__(self, mode: str, args: argparse.Namespace) -> None:
        flags = [f"--gb={args.gb}", f"--tensors={args.tensors}"]
        flags += [f"--clients={args.clients}", f"--rounds={args.rounds}"]
        self.process = subprocess.Popen(
            [sys.executable, __file__, f"--serve={mode}", *flags],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        hello = json.loads(self._stdout().readline() or "{}")
        if "port" not in hello:
            raise RuntimeError(f"the {mode} server did not start (exit {self.process.wait()})")
        self.address = f"127.0.0.1:{hello['port']}"
        self.commits = [ObjectId(c) for c in hello["commits"]]
        self.cpu_at_start = float(hello["cpu"])

    def _stdout(self) -> IO[str]:
        assert self.process.stdout is not None
        return self.process.stdout

    def finish(self) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.close()
        report: dict[str, Any] = json.loads(self._stdout().readline() or "{}")
        self.process.wait(timeout=60)
        return report


# -- the measurements -----------------------------------------------------------------------


def fetch(args: argparse.Namespace) -> dict[str, float]:
    """Phases 1 and 2: one client fetching a large base, then a mostly unchanged one."""
    server = Server("fetch", args)
    first, second = server.commits
    try:
        with GrpcLink(server.address, signer=client_key(0), timeout=None) as link:
            ids = link.list_objects(first)
            start, cpu = time.perf_counter(), time.process_time()
            payload = sum(len(obj.payload) for obj in link.get_objects(ids))
            wire_seconds = time.perf_counter() - start
            client_cpu = time.process_time() - cpu
            participant = Participant(link, Shift(0.0), client_key(0), Repository.memory())
            before = link.bytes_received
            start = time.perf_counter()
            participant.download(first)
            download_seconds = time.perf_counter() - start
            round1 = link.bytes_received - before
            participant.download(second)
            round2 = link.bytes_received - before - round1
    finally:
        report = server.finish()
    server_cpu = float(report.get("cpu", "nan")) - server.cpu_at_start
    return {
        "client_cpu_s_per_gb": client_cpu / (payload / 1e9),
        "server_cpu_s_per_gb": server_cpu / (float(report.get("bytes_sent", "nan")) / 1e9),
        "payload_mb": payload / MB,
        "wire_mb_s": payload / MB / wire_seconds,
        "download_mb_s": payload / MB / download_seconds,
        "round1_bytes": float(round1),
        "round2_bytes": float(round2),
        "round2_percent": 100.0 * round2 / round1,
    }


def fleet(args: argparse.Namespace) -> dict[str, Any]:
    """Phase 3: ``args.clients`` threads taking part in ``args.rounds`` rounds at once."""
    server = Server("fleet", args)
    errors: list[str] = []
    submitted = [0] * args.clients

    def client(index: int) -> None:
        backoff = Backoff(initial=0.05, maximum=1.0, give_up_after=120.0)
        try:
            key = client_key(index)
            with GrpcLink(
                server.address, signer=key, backoff=backoff, options=OWN_CONNECTION
            ) as link:
                participant = Participant(link, Shift(0.01), key, Repository.memory())
                done = participant.run()
                submitted[index] = sum(s.verdict.admitted for s in done)
                errors.extend(s.verdict.reason for s in done if not s.verdict.admitted)
        except Exception as exc:  # a bench reports every failure instead of stopping at one
            errors.append(f"client {index}: {type(exc).__name__}: {exc}")

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start
    report = server.finish()
    return {
        "seconds": seconds,
        "admitted": sum(submitted),
        "errors": errors,
        "server": report,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gb", type=float, default=0.1, help="size of the fetched base")
    parser.add_argument("--tensors", type=int, default=10, help="tensors in the base")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--rounds", type=int, default=2, help="rounds the fleet runs")
    parser.add_argument("--serve", choices=["fetch", "fleet"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve, args)
        return 0
    figures = fetch(args)
    print(f"1. fetch {figures['payload_mb']:.0f} MB base over loopback:")
    print(f"   wire (received + hash-checked): {figures['wire_mb_s']:8.1f} MB/s")
    print(f"   into a memory repository:       {figures['download_mb_s']:8.1f} MB/s")
    print(
        f"   CPU per GB: client {figures['client_cpu_s_per_gb']:.2f} s (wire fetch), "
        f"server {figures['server_cpu_s_per_gb']:.2f} s (everything it sent)"
    )
    changed = 100.0 / args.tensors
    print(f"2. next base with {100 - changed:.0f}% of tensors unchanged:")
    print(
        f"   {figures['round2_bytes'] / MB:.1f} MB on the wire, "
        f"{figures['round2_percent']:.1f}% of the first fetch "
        f"({figures['round1_bytes'] / MB:.1f} MB)"
    )
    result = fleet(args)
    server = result["server"]
    print(f"3. {args.clients} concurrent clients x {args.rounds} rounds:")
    print(
        f"   {result['admitted']} updates admitted, {server.get('rounds', '?')} rounds merged "
        f"in {result['seconds']:.1f} s, {len(result['errors'])} errors"
    )
    print(f"   server peak RSS: {server.get('peak_rss_mb', float('nan')):.0f} MiB")
    for error in result["errors"][:10]:
        print(f"   error: {error}")
    expected = args.clients * args.rounds
    return 0 if not result["errors"] and result["admitted"] == expected else 1


if __name__ == "__main__":
    sys.exit(main())
