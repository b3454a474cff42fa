"""What every command shares: finding the repository, loading a model, printing JSON."""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedvc.align import PermutationSpec
from fedvc.errors import FedvcError
from fedvc.objects import ObjectId
from fedvc.repo import Repository
from fedvc.tensor_files import is_model_path, load_params
from fedvc.user_code import import_object


class UsageError(FedvcError):
    """A command line that cannot be carried out as given."""


def open_repo(args: argparse.Namespace) -> Repository:
    return Repository.open(args.repo) if args.repo else Repository.discover()


def maybe_repo(args: argparse.Namespace) -> Repository | None:
    """The repository if there is one: commands that also take files work without it."""
    try:
        return open_repo(args)
    except FedvcError:
        return None


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False))


def is_model_file(spec: str) -> bool:
    path = Path(spec)
    return is_model_path(path) and path.is_file()


def load_model(
    repo: Repository | None, spec: str
) -> tuple[dict[str, np.ndarray], dict[str, ObjectId]]:
    """A model from a file or a revision, with blob ids when it came from the repository."""
    if is_model_file(spec):
        return load_params(Path(spec)), {}
    if repo is None:
        raise UsageError(f"{spec!r} is not a model file and no repository was found to resolve it")
    snapshot = repo.get_commit(repo.resolve(spec)).snapshot
    entries = repo.get_snapshot(snapshot).tensors
    return repo.read_snapshot(snapshot), {n: e.blob for n, e in entries.items()}


def parse_assignments(items: Sequence[str], option: str) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; values that read as JSON numbers, booleans or null stay typed."""
    values: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise UsageError(f"{option} expects KEY=VALUE, got {item!r}")
        try:
            value = json.loads(text)
        except ValueError:
            value = text
        if isinstance(value, float) and not math.isfinite(value):
            value = text
        values[key] = value
    return values


def read_spec(path: str | None) -> PermutationSpec | None:
    """The ``--spec`` file, if one was given."""
    if path is None:
        return None
    try:
        return PermutationSpec.from_json(Path(path).read_text())
    except OSError as exc:
        raise UsageError(f"--spec {path}: cannot read it: {exc}") from None


def model_and_data(args: argparse.Namespace) -> tuple[Callable[[], Any], np.ndarray, Any]:
    """``--model MODULE:FACTORY`` and ``--data MODULE:LOADER``: the factory, and the
    loader's ``(inputs, targets)``, checked to be that pair."""
    factory = import_object(args.model, "--model")
    if not callable(factory):
        raise UsageError(f"--model {args.model!r} is a {type(factory).__name__}, not a factory")
    loaded = import_object(args.data, "--data")()
    if not (isinstance(loaded, tuple) and len(loaded) == 2):
        raise UsageError(
            f"--data {args.data!r} must return (inputs, targets), got {type(loaded).__name__}"
        )
    return factory, np.asarray(loaded[0]), loaded[1]
