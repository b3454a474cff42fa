"""Repository commands: init, keygen, commit, log, show, checkout, branch, tag, verify."""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fedvc import gc, render
from fedvc.cli.common import UsageError, open_repo, parse_assignments, print_json
from fedvc.objects import Commit, ObjectId, short_id
from fedvc.replay import replay_history
from fedvc.repo import Repository
from fedvc.signing import (
    PublicKey,
    SigningError,
    SigningKey,
    commit_signature_valid,
)
from fedvc.tensor_files import load_params, save_params
from fedvc.trust import TrustStore
from fedvc.verify import verify


def cmd_init(args: argparse.Namespace) -> int:
    repo = Repository.init(args.directory, bare=args.bare, branch=args.branch)
    print(
        f"Initialized empty fedvc repository in {repo.path.resolve() if repo.path else args.directory} (branch {args.branch})"
    )
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    key = SigningKey.generate()
    key.save(args.out, overwrite=args.force)
    print(f"key id:     {key.key_id}")
    print(f"public key: {key.public_key.hex()}")
    print(f"wrote {args.out} (private, keep it secret) and {args.out}.pub (share it)")
    return 0


def cmd_commit(args: argparse.Namespace) -> int:
    repo = open_repo(args)
    params = load_params(args.model)
    signer = SigningKey.load(args.key) if args.key else None
    oid = repo.commit_params(
        params,
        args.message,
        branch=args.branch,
        metadata=parse_assignments(args.meta, "--meta"),
        signer=signer,
    )
    commit = repo.get_commit(oid)
    nbytes = repo.get_snapshot(commit.snapshot).nbytes
    signed = f", signed by {signer.key_id}" if signer else ", unsigned"
    branch = args.branch or repo.head_branch
    print(f"[{branch} {short_id(oid)}] {args.message}")
    print(f" {len(params)} tensors, {render.size(nbytes)}{signed}")
    return 0


def _labels(repo: Repository) -> dict[ObjectId, list[str]]:
    labels: dict[ObjectId, list[str]] = {}
    head = repo.head_branch
    for name, oid in repo.branches().items():
        labels.setdefault(oid, []).append(f"HEAD -> {name}" if name == head else name)
    for name, oid in repo.tags().items():
        labels.setdefault(oid, []).append(f"tag: {name}")
    return labels


def commit_json(oid: ObjectId, commit: Commit) -> dict[str, Any]:
    return {
        "id": oid,
        "parents": list(commit.parents),
        "snapshot": commit.snapshot,
        "author": commit.author,
        "key_id": PublicKey.from_hex(commit.author).key_id if commit.author else None,
        "signature": _signature_state(commit),
        "timestamp": commit.timestamp,
        "message": commit.message,
        "metadata": dict(commit.metadata),
    }


def _signature_state(commit: Commit) -> str:
    if commit.signature is None:
        return "unsigned"
    return "valid" if commit_signature_valid(commit) else "INVALID"


def cmd_log(args: argparse.Namespace) -> int:
    repo = open_repo(args)
    entries = repo.log(args.rev, limit=args.max_count, first_parent=args.first_parent)
    if args.json:
        print_json([commit_json(oid, c) for oid, c in entries])
        return 0
    labels = _labels(repo)
    if args.graph:
        print("\n".join(render.graph_lines(entries, labels)))
        return 0
    for oid, commit in entries:
        print(render.summary_line(oid, commit, labels.get(oid, ())))
        key = PublicKey.from_hex(commit.author).key_id if commit.author else "-"
        print(f"    {render.date(commit.timestamp)}  key {key}  {_signature_state(commit)}")
        if commit.metadata:
            print(f"    {render.metadata_brief(commit.metadata)}")
    return 0


def _show_round(record: object) -> bool:
    """Print a round merge's record readably; False (print nothing) for any other shape."""
    if not isinstance(record, Mapping):
        return False
    try:
        lines = render.round_lines(record)
    except (KeyError, TypeError, ValueError, AttributeError):
        return False
    for line in lines:
        print(f"    {line}".rstrip())
    print()
    return True


def cmd_show(args: argparse.Namespace) -> int:
    repo = open_repo(args)
    oid = repo.resolve(args.rev)
    commit = repo.get_commit(oid)
    snapshot = repo.get_snapshot(commit.snapshot)
    if args.json:
        print_json(
            {
                **commit_json(oid, commit),
                "tensors": {n: e.to_json() for n, e in snapshot.tensors.items()},
            }
        )
        return 0
    info = commit_json(oid, commit)
    print(f"commit    {oid}")
    for parent in commit.parents:
        print(f"parent    {parent}")
    print(f"author    {info['key_id'] or '-'} ({info['signature']})")
    print(f"date      {render.date(commit.timestamp)}")
    print(f"snapshot  {commit.snapshot}")
    print()
    for line in commit.message.splitlines() or ["(no message)"]:
        print(f"    {line}")
    if commit.metadata:
        print()
        shown = _show_round(commit.metadata.get("round"))
        for key, value in sorted(commit.metadata.items()):
            if not (shown and key == "round"):
                print(f"    {key} = {json.dumps(value, ensure_ascii=False, sort_keys=True)}")
    print()
    rows = [
        (
            name,
            e.dtype,
            "x".join(map(str, e.shape)) or "scalar",
            math.prod(e.shape),
            render.size(e.nbytes),
            short_id(e.blob),
        )
        for name, e in snapshot.tensors.items()
    ]
    print(
        "\n".join(
            render.table(["tensor", "dtype", "shape", "numel", "size", "blob"], rows, "lllrrl")
        )
    )
    total = sum(math.prod(e.shape) for e in snapshot.tensors.values())
    print(f"{len(rows)} tensors, {total} parameters, {render.size(snapshot.nbytes)}")
    return 0


def cmd_checkout(args: argparse.Namespace) -> int:
    repo = open_repo(args)
    oid = repo.resolve(args.rev)
    params = repo.read_snapshot(repo.get_commit(oid).snapshot)
    out = Path(args.output)
    save_params(
        params, out, metadata={"fedvc.commit": oid} if out.suffix == ".safetensors" else None
    )
    print(f"wrote {out}: {len(params)} tensors from commit {short_id(oid)}")
    return 0


def _ref_command(kind: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        repo = open_repo(args)
        if args.name is None:
            current = repo.head_branch if kind == "branch" else None
            refs = repo.branches() if kind == "branch" else repo.tags()
            for name, oid in refs.items():
                print(f"{'*' if name == current else ' '} {name:<20} {short_id(oid)}")
            return 0
        create = repo.create_branch if kind == "branch" else repo.create_tag
        oid = create(args.name, args.rev, force=args.force)
        print(f"{kind} {args.name} -> {short_id(oid)}")
        return 0

    return run


def _trust(specs: Sequence[str]) -> TrustStore | None:
    """``--trust`` values: key files or directories, key ids, or 64-hex public keys."""
    keys: list[PublicKey] = []
    ids: set[str] = set()
    for spec in specs:
        if Path(spec).exists():
            keys.extend(TrustStore.from_paths([spec]))
        elif len(spec) == 64:
            keys.append(PublicKey.from_hex(spec))
        elif len(spec) == 16 and all(c in "0123456789abcdef" for c in spec):
            ids.add(spec)
        else:
            raise SigningError(
                f"--trust {spec!r}: expected a key file or directory, a 16-hex key id, or a "
                "64-hex public key"
            )
    return TrustStore(keys, ids) if specs else None


def cmd_verify(args: argparse.Namespace) -> int:
    repo = open_repo(args)
    report = verify(repo, args.rev, _trust(args.trust))
    replays = replay_history(repo, args.rev) if args.replay and report.ok else []
    failed = [r for r in replays if r.ok is False]
    if args.json:
        print_json(
            {
                **report.to_json(),
                "replays": [{"commit": r.commit, "ok": r.ok, "detail": r.detail} for r in replays],
            }
        )
        return 0 if report.ok and not failed else 1
    for problem in report.problems:
        print(f"error: {problem}")
    for result in replays:
        verdict = {True: "replayed", False: "error: replay", None: "skipped"}[result.ok]
        print(f"{verdict} {short_id(result.commit)}: {result.detail}")
    print(
        f"checked {report.commits} commits, {report.snapshots} snapshots, {report.blobs} blobs "
        f"({render.size(report.bytes_checked)}); {report.signed} signed, {len(report.unsigned)} unsigned"
    )
    if report.ok and not failed:
        print(f"ok: history of {short_id(report.head)} verifies")
        return 0
    print(f"FAILED: {len(report.problems) + len(failed)} problem(s)")
    return 1


def cmd_gc(args: argparse.Namespace) -> int:
    if args.older_than < 0:
        raise UsageError(f"--older-than must be 0 or more seconds, got {args.older_than:g}")
    with open_repo(args) as repo:
        report = gc.collect(repo, grace_seconds=args.older_than, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    print(
        f"{verb} {len(report.removed)} unreachable objects ({render.size(report.removed_bytes)}) "
        f"and {report.temp_files} temporary files; kept {report.reachable} reachable objects "
        f"and {report.young} unreachable ones younger than {args.older_than:g} s"
    )
    if report.missing:
        listed = ", ".join(short_id(oid) for oid in report.missing[:5])
        print(
            f"warning: the history names {len(report.missing)} objects the store lacks "
            f"({listed}); run fedvc verify"
        )
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("init", help="create a repository")
    p.add_argument("directory", nargs="?", default=".")
    p.add_argument(
        "--bare", action="store_true", help="store directly in DIRECTORY, not DIRECTORY/.fedvc"
    )
    p.add_argument("--branch", default="main", help="name of the first branch (default: main)")
    p.set_defaults(run=cmd_init)

    p = sub.add_parser("keygen", help="make an Ed25519 signing key")
    p.add_argument("--out", required=True, help="private key file; the public key goes to OUT.pub")
    p.add_argument("--force", action="store_true", help="overwrite existing key files")
    p.set_defaults(run=cmd_keygen)

    p = sub.add_parser("commit", help="commit a model file (.safetensors or .npz)")
    p.add_argument("model")
    p.add_argument("-m", "--message", default="")
    p.add_argument("--key", help="sign with this private key file")
    p.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--branch", help="branch to commit on (default: HEAD's branch)")
    p.set_defaults(run=cmd_commit)

    p = sub.add_parser("log", help="show history")
    p.add_argument("rev", nargs="?", default="HEAD")
    p.add_argument("--graph", action="store_true")
    p.add_argument("--json", action="store_true")
    p.add_argument("-n", "--max-count", type=int)
    p.add_argument("--first-parent", action="store_true")
    p.set_defaults(run=cmd_log)

    p = sub.add_parser("show", help="show a commit and its tensors")
    p.add_argument("rev", nargs="?", default="HEAD")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_show)

    p = sub.add_parser("checkout", help="write a revision's model to a file")
    p.add_argument("rev")
    p.add_argument("-o", "--output", required=True, help="OUT.safetensors or OUT.npz")
    p.set_defaults(run=cmd_checkout)

    for kind in ("branch", "tag"):
        p = sub.add_parser(
            kind,
            help=f"list {kind}es or create one" if kind == "branch" else "list tags or create one",
        )
        p.add_argument("name", nargs="?")
        p.add_argument("rev", nargs="?", default="HEAD")
        p.add_argument("--force", action="store_true", help=f"move an existing {kind}")
        p.set_defaults(run=_ref_command(kind))

    p = sub.add_parser("verify", help="check every hash and signature in a revision's history")
    p.add_argument("rev", nargs="?", default="HEAD")
    p.add_argument(
        "--trust",
        action="append",
        default=[],
        metavar="KEYFILE_OR_ID",
        help="require every commit signed by one of these keys (repeatable)",
    )
    p.add_argument(
        "--replay",
        action="store_true",
        help="also recompute every merge from its recorded inputs and compare snapshots",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_verify)

    p = sub.add_parser("gc", help="remove the objects no branch or tag reaches")
    p.add_argument(
        "--older-than",
        type=float,
        default=gc.DEFAULT_GRACE_SECONDS,
        metavar="SECONDS",
        help="keep unreachable objects written more recently (default: 14 days); longer "
        "than a round when a server uses the repository",
    )
    p.add_argument("--dry-run", action="store_true", help="only report what would be removed")
    p.set_defaults(run=cmd_gc)
