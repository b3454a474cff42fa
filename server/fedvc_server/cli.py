"""``fedvc-server``: serve federated rounds, each recorded as a signed merge commit.

    fedvc-server --config server.toml
    fedvc-server demo --clients 3 --rounds 3 --dir demo

``demo`` is the quickest way to see a fleet: fresh keys, a server on loopback and N
``fedvc-client`` processes training the reference digits task, one line per round, and
the server's repository left in DIR/server for ``fedvc log --graph`` and ``verify``.
Exit codes: 0 when the last round is merged, 2 on bad input or an error.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from fedvc.errors import FedvcError
from fedvc.signing import SigningKey
from fedvc_server.app import FleetServer, ProgressPrinter
from fedvc_server.config import ConfigError, load_config

DEMO_CONFIG = """\
[server]
address = "127.0.0.1:0"
repository = "server"
key = "keys/server.key"
trusted_keys = "keys/clients"
metrics_port = {metrics_port}
[model]
initial = "fedvc_client.reference:digits_initial"
[rounds]
count = {rounds}
min_clients = {clients}
max_clients = {clients}
deadline_seconds = 120
[strategy]
name = "{strategy}"
[updates]
max_norm = 1000.0
[train]
epochs = 2
lr = 0.05
batch_size = 32
"""


def say(line: str) -> None:
    print(line, flush=True)


def serve(config_path: str) -> int:
    config = load_config(config_path)
    server = FleetServer(config, progress=ProgressPrinter(say)).start()
    signal.signal(signal.SIGTERM, lambda *_: server.interrupt())  # docker stop, systemd
    state = server.coordinator.state
    say(  # only once SIGTERM is handled: whoever waits for this line may send it at once
        f"fedvc-server: serving {config.address.rsplit(':', 1)[0]}:{server.port}"
        f"{' with TLS' if config.tls else ''}; repository {config.repository}; "
        + (f"round {state.number} of {config.rounds}" if state else "all rounds are done")
    )
    try:
        server.wait()
    except KeyboardInterrupt:  # wait() has stopped the server on its way out
        return 130
    state = server.coordinator.state
    if state is not None:
        say(f"stopped in round {state.number}; start again to continue from main")
        return 0
    say(f"done: {config.rounds} rounds merged on main in {config.repository}")
    return 0


def demo(args: argparse.Namespace) -> int:
    root = Path(args.dir).resolve()
    if (root / "server").exists():
        raise ConfigError(f"{root / 'server'} exists already: choose an empty --dir")
    clients = root / "keys" / "clients"
    clients.mkdir(parents=True, exist_ok=True)
    SigningKey.generate().save(root / "keys" / "server.key")
    for i in range(args.clients):
        key = SigningKey.generate()
        key.save(root / "keys" / f"client-{i}.key")
        (clients / f"client-{i}.pub").write_bytes(key.public_key.to_pem())
    (root / "server.toml").write_text(
        DEMO_CONFIG.format(
            rounds=args.rounds,
            clients=args.clients,
            strategy=args.strategy,
            metrics_port=args.metrics_port,
        )
    )
    server = FleetServer(load_config(root / "server.toml"), progress=ProgressPrinter(say))
    server.start()
    say(f"server on 127.0.0.1:{server.port}; starting {args.clients} fedvc-client processes")
    started = time.monotonic()
    logs = [open(root / f"client-{i}.log", "w") for i in range(args.clients)]  # noqa: SIM115
    processes = [
        subprocess.Popen(
            [
                sys.executable, "-m", "fedvc_client",
                "--server", f"127.0.0.1:{server.port}",
                "--key", str(root / "keys" / f"client-{i}.key"),
                "--task", "fedvc_client.reference:digits_task",
                "--task-arg", f"client={i}",
                "--task-arg", f"clients={args.clients}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        for i, log in enumerate(logs)
    ]  # fmt: skip
    try:
        server.wait(poll=lambda: _check_clients(processes, root))
        for process in processes:
            process.wait(timeout=60)
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
        for log in logs:
            log.close()
    say(
        f"{args.rounds} rounds in {time.monotonic() - started:.1f} s. The history:\n"
        f"  fedvc --repo {root / 'server'} log --graph\n"
        f"  fedvc --repo {root / 'server'} verify --replay --trust {clients}"
        f" --trust {root / 'keys' / 'server.key.pub'}"
    )
    return 0


def _check_clients(processes: list[subprocess.Popen[bytes]], root: Path) -> None:
    failed = [i for i, p in enumerate(processes) if p.poll() not in (None, 0)]
    if len(failed) == len(processes):
        raise FedvcError(f"every client exited with an error; see {root}/client-*.log")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedvc-server", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument("--config", metavar="TOML", help="the server's configuration file")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo_parser = sub.add_parser("demo", help="a server and N clients on loopback")
    demo_parser.add_argument("--clients", type=int, default=3)
    demo_parser.add_argument("--rounds", type=int, default=3)
    demo_parser.add_argument("--dir", default="fedvc-demo", help="where keys and history go")
    demo_parser.add_argument("--strategy", default="fedavg")
    demo_parser.add_argument("--metrics-port", type=int, default=0, help="0: no /metrics")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            if args.clients < 1 or args.rounds < 1:
                raise ConfigError("--clients and --rounds must be at least 1")
            return demo(args)
        if args.config is None:
            parser.error("give --config server.toml, or run 'fedvc-server demo'")
        return serve(args.config)
    except FedvcError as exc:
        print(f"fedvc-server: error: {exc}", file=sys.stderr)
        return 2
