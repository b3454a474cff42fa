"""``fedvc_client.run``: take part in a coordinator's rounds over gRPC until it is done.

The participant's repository is its object cache: with ``cache`` it lives on disk, so a
restarted client does not download the tensors it already holds again.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from fedvc.participant import Participant, Submitted, Task
from fedvc.repo import Repository
from fedvc.signing import SigningKey
from fedvc.user_code import UserCodeError, import_object
from fedvc_client.link import ClientTls, GrpcLink


def load_task(spec: str, args: Mapping[str, Any] | None = None) -> Task:
    """``package.module:name`` → a Task: ``name`` is a Task, or a factory (a function or a
    Task class) called with ``args``."""
    found = import_object(spec, "--task")
    if hasattr(found, "train") and not isinstance(found, type):
        if args:
            raise UserCodeError(
                f"--task {spec!r} is a Task, not a function that builds one, so it takes no "
                f"--task-arg (got {sorted(args)})"
            )
        task = found
    else:
        try:
            task = found(**dict(args or {})) if callable(found) else found
        except TypeError as exc:
            raise UserCodeError(f"--task {spec!r} with {dict(args or {})}: {exc}") from exc
    if not callable(getattr(task, "train", None)):
        raise UserCodeError(
            f"--task {spec!r} gave {type(task).__name__}, which has no train(params, config) "
            "method; it must be a Task or a function returning one"
        )
    return task  # type: ignore[no-any-return]


def open_cache(path: str | Path | None) -> Repository:
    """A disk repository at ``path`` (created if needed), or one in memory."""
    if path is None:
        return Repository.memory()
    return Repository.open_or_init(path)


def run(
    server: str,
    key: SigningKey | str | Path,
    task: Task,
    *,
    tls: ClientTls | None = None,
    cache: str | Path | None = None,
    max_rounds: int | None = None,
    on_round: Callable[[Submitted], None] | None = None,
) -> list[Submitted]:
    """Take part in rounds at ``server`` (``host:port``) until the coordinator is finished.

    ``key`` signs every update and every call (a ``SigningKey`` or a key file); the
    coordinator serves and admits only keys it trusts. ``on_round`` hears every submission and its verdict.
    """
    signer = key if isinstance(key, SigningKey) else SigningKey.load(key)
    link = GrpcLink(server, tls=tls, signer=signer)
    repo = open_cache(cache)
    try:
        return Participant(link, task, signer, repo).run(max_rounds=max_rounds, on_round=on_round)
    finally:
        link.close()
        repo.close()
