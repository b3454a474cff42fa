"""Replaying a merge: recompute it from what its commit records and compare snapshots.

Signatures prove who wrote a merge commit; they do not prove the merged model is what
its strategy makes of its inputs. Because strategies are pure and a round's merge commit
names everything that went in (base, each update commit and its weight, the strategy spec,
the strategy state it started from), anyone holding the history can run the merge again
and check that the result hashes to the very snapshot the commit names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fedvc.graph import history
from fedvc.merge.base import (
    MergeError,
    State,
    StrategySpec,
    Update,
    ordered,
    uses_fisher,
    uses_grams,
)
from fedvc.merge.registry import strategy_from_spec
from fedvc.objects import (
    Commit,
    MalformedObjectError,
    ObjectId,
    Snapshot,
    TensorEntry,
    hash_object,
)
from fedvc.repo import Repository
from fedvc.round import Admitted
from fedvc.round_store import admitted_update, saved_strategy_state
from fedvc.store.base import StoreError
from fedvc.tensors import ParamMap, dtype_name, tensor_bytes


@dataclass(frozen=True)
class Replay:
    """The outcome of replaying one merge commit.

    ``ok`` is None when the commit records too little to replay (a merge of model files,
    activation alignment, Fisher files): ``detail`` says why.
    """

    commit: ObjectId
    ok: bool | None
    detail: str


def snapshot_id(params: ParamMap) -> ObjectId:
    """The id the snapshot of ``params`` would have, without storing anything."""
    entries = {
        name: TensorEntry(
            hash_object("blob", tensor_bytes(array)), dtype_name(array.dtype), tuple(array.shape)
        )
        for name, array in params.items()
    }
    return hash_object("snapshot", Snapshot(entries).encode())


def replay(repo: Repository, oid: ObjectId) -> Replay:
    """Recompute the merge commit ``oid`` and compare its snapshot id."""
    commit = repo.get_commit(oid)
    try:
        recipe = _recipe(repo, commit)
    except (MalformedObjectError, StoreError) as exc:
        return Replay(oid, False, f"its recorded inputs cannot be read: {exc}")
    if isinstance(recipe, str):
        return Replay(oid, None, recipe)
    spec, base_id, updates, state = recipe
    inputs = sorted(u.client for u in updates)
    if inputs != sorted(commit.parents[1:]):
        return Replay(
            oid,
            False,
            f"its metadata merges {len(inputs)} updates that are not its {len(commit.parents) - 1}"
            " signed parents: the recorded inputs are not the ones its history vouches for",
        )
    try:
        strategy = strategy_from_spec(spec)
        base = repo.read_params(base_id)
        merged, _ = strategy.merge(
            base, ordered(updates), state if state is not None else strategy.init(base)
        )
    except MergeError as exc:
        return Replay(oid, False, f"the recorded merge cannot be run again: {exc}")
    again = snapshot_id(merged)
    if again == commit.snapshot:
        return Replay(oid, True, f"{spec} of {len(updates)} updates gives snapshot {again[:12]}")
    return Replay(
        oid,
        False,
        f"running {spec} on the recorded inputs gives snapshot {again[:12]}, but the commit "
        f"names {commit.snapshot[:12]}: the merged model is not what its inputs make",
    )


Recipe = tuple[StrategySpec, ObjectId, list[Update], State | None]


def _recipe(repo: Repository, commit: Commit) -> Recipe | str:
    meta = commit.metadata
    if isinstance(meta.get("round"), Mapping):
        return _round_recipe(repo, commit, meta["round"])
    if isinstance(meta.get("merge"), Mapping):
        return _cli_recipe(repo, commit, meta["merge"])
    return "not a merge commit (no 'round' or 'merge' metadata)"


def _round_recipe(repo: Repository, commit: Commit, record: Mapping[str, Any]) -> Recipe:
    base_id = commit.parents[0]
    spec = StrategySpec.from_json(record["strategy"])
    updates = [admitted_update(repo, Admitted.from_json(p), spec) for p in record["participants"]]
    state = saved_strategy_state(repo, repo.get_commit(base_id))
    return spec, base_id, updates, state


def _cli_recipe(repo: Repository, commit: Commit, record: Mapping[str, Any]) -> Recipe | str:
    if record.get("align") == "activation":
        return "activation alignment ran a model on data the commit does not hold"
    inputs = record.get("inputs", [])
    if any(str(i["input"]).startswith("file:") for i in inputs):
        return "some inputs were model files, not commits"
    spec = StrategySpec.from_json(record["strategy"])
    if uses_fisher(spec) or uses_grams(spec):
        return "the Fisher or Grams it merged with are not recorded in the commit"
    if len(commit.parents) != len(inputs) + 1:
        return "the merge had no base commit"
    updates = [Update(repo.read_params(i["input"]), float(i["weight"]), i["input"]) for i in inputs]
    return spec, commit.parents[0], updates, None


def replay_history(repo: Repository, rev: str = "HEAD") -> list[Replay]:
    """Replay every merge commit in ``rev``'s history, oldest first."""
    commits = history(repo.get_commit, [repo.resolve(rev)])
    merges = [oid for oid, commit in commits if _is_merge(commit)]
    return [replay(repo, oid) for oid in reversed(merges)]


def _is_merge(commit: Commit) -> bool:
    return any(isinstance(commit.metadata.get(k), Mapping) for k in ("round", "merge"))
