"""``fedvc``: the command line over the library.

Commands: init, keygen, commit, log, show, diff, checkout, branch, tag, verify, gc, merge,
barrier, simulate.
Each is a small function from parsed arguments to printed text; the work is in the
library. Exit codes: 0 success, 1 a check failed (``verify``), 2 bad input or a fedvc
error (the message says what was expected, what came, and what to do).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from fedvc.cli import diff_commands, merge_commands, repo_commands, simulate_commands
from fedvc.errors import FedvcError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedvc", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", metavar="DIR", help="repository (default: nearest .fedvc upward)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    repo_commands.add_commands(sub)
    diff_commands.add_commands(sub)
    merge_commands.add_commands(sub)
    simulate_commands.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except FedvcError as exc:
        print(f"fedvc: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
