"""``fedvc-client``: take part in a fedvc coordinator's rounds with your own task.

    fedvc-client --server HOST:PORT --key client.key --task mypkg.task:task \\
                 [--task-arg KEY=VALUE ...] [--cache DIR] [--tls-ca CA --tls-cert C --tls-key K]

Exit codes: 0 when the coordinator has merged its last round, 2 on bad input or an error
(the message says what was expected, what came, and what to do).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from fedvc.cli.common import parse_assignments
from fedvc.errors import FedvcError
from fedvc.participant import Submitted
from fedvc_client.link import ClientTls
from fedvc_client.run import load_task, run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedvc-client", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument("--server", required=True, metavar="HOST:PORT")
    parser.add_argument("--key", required=True, help="this client's Ed25519 key file")
    parser.add_argument(
        "--task",
        default="fedvc_client.reference:digits_task",
        metavar="MODULE:NAME",
        help="a Task, or a function returning one (default: the reference digits task)",
    )
    parser.add_argument(
        "--task-arg", action="append", default=[], metavar="KEY=VALUE", help="task argument"
    )
    parser.add_argument("--cache", metavar="DIR", help="keep received objects on disk here")
    parser.add_argument("--max-rounds", type=int, help="stop after this many submissions")
    parser.add_argument("--tls-ca", metavar="PEM", help="CA certificate that signed the server's")
    parser.add_argument("--tls-cert", metavar="PEM", help="client certificate (mutual TLS)")
    parser.add_argument("--tls-key", metavar="PEM", help="client certificate's key (mutual TLS)")
    return parser


def report(submitted: Submitted) -> None:
    verdict = submitted.verdict
    outcome = "admitted" if verdict.admitted else f"rejected ({verdict.reason}): {verdict.detail}"
    print(f"round {submitted.round}: update {submitted.commit[:12]} {outcome}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if (args.tls_cert is None) != (args.tls_key is None):
            raise FedvcError("--tls-cert and --tls-key go together (mutual TLS): give both")
        if args.tls_cert and not args.tls_ca:
            raise FedvcError("mutual TLS needs --tls-ca too, to check the server's certificate")
        tls = (
            ClientTls.from_files(args.tls_ca, args.tls_key, args.tls_cert) if args.tls_ca else None
        )
        task = load_task(args.task, parse_assignments(args.task_arg, "--task-arg"))
        done = run(
            args.server,
            args.key,
            task,
            tls=tls,
            cache=args.cache,
            max_rounds=args.max_rounds,
            on_round=report,
        )
    except FedvcError as exc:
        print(f"fedvc-client: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    print(f"done: {len(done)} updates submitted", flush=True)
    return 0
