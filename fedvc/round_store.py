"""Rounds in a repository: reading their inputs back and writing their merge commits.

The gRPC/in-process ``Coordinator``, the Flower strategy and ``fedvc verify --replay`` all
meet here, so a round is recorded, and read back, in exactly one way: the octopus merge
commit (parents: base, then the admitted update commits sorted by id) signed by the
coordinator, with the strategy's state stored as a snapshot the commit names.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

from fedvc.merge.base import MergeStrategy, State, StrategySpec, Update, uses_fisher, uses_grams
from fedvc.objects import Commit, ObjectId, is_object_id
from fedvc.repo import Repository, branch_ref
from fedvc.round import Admitted, MergeResult, RoundState
from fedvc.signing import SigningKey
from fedvc.transport import WireObject


def admitted_update(repo: Repository, admitted: Admitted, strategy: StrategySpec) -> Update:
    """The ``Update`` an admitted commit contributes to a merge with ``strategy``: its model
    (memory-mapped), weighted by its example count, named by its commit id, with its Fisher
    and Grams when it sent them and the strategy merges with them (Grams can outweigh the
    model, so they are not read for nothing)."""
    commit = repo.get_commit(admitted.commit)
    fisher = admitted.fisher if uses_fisher(strategy) else None
    grams = admitted.grams if uses_grams(strategy) else None
    return Update(
        repo.read_snapshot(commit.snapshot),
        weight=float(admitted.examples),
        client=admitted.commit,
        fisher=repo.read_snapshot(fisher) if fisher else None,
        grams=repo.read_snapshot(grams) if grams else None,
    )


def attached_snapshots(commit: Commit) -> dict[str, ObjectId]:
    """Snapshots a commit names in its metadata rather than as its model: an update's
    diagonal Fisher or layer Grams, a round merge's saved strategy state. They are part of what a replay
    reads, so ``verify`` checks them like the model itself."""
    record = commit.metadata.get("round")
    found = {
        "Fisher": commit.metadata.get("fisher"),
        "Grams": commit.metadata.get("grams"),
        "strategy state": record.get("strategy_state") if isinstance(record, Mapping) else None,
    }
    # an absent or malformed id names nothing (a malformed one is refused at the door)
    return {role: ObjectId(str(value)) for role, value in found.items() if is_object_id(value)}


def saved_strategy_state(repo: Repository, commit: Commit) -> State | None:
    """The strategy state a round's merge commit saved (server momentum, moments...)."""
    saved = attached_snapshots(commit).get("strategy state")
    return dict(repo.read_snapshot(saved)) if saved is not None else None


def starting_state(repo: Repository, strategy: MergeStrategy, base: ObjectId) -> State:
    """The state a round on ``base`` starts from: what the last merge saved, else fresh."""
    commit = repo.get_commit(base)
    saved = saved_strategy_state(repo, commit)
    return saved if saved is not None else strategy.init(repo.read_snapshot(commit.snapshot))


def record_merge(
    repo: Repository,
    state: RoundState,
    result: MergeResult,
    *,
    signer: SigningKey,
    branch: str,
    message: str,
) -> ObjectId:
    """Write the round's signed octopus merge commit and move ``branch`` to it.

    The branch moves by compare-and-swap from the round's base, so two coordinators on
    one repository can never both record a round on the same base.
    """
    metadata = result.metadata
    if result.strategy_state:
        metadata["round"]["strategy_state"] = repo.write_snapshot(result.strategy_state)
    oid = repo.write_commit(
        repo.write_snapshot(result.params),
        parents=[state.base, *sorted(a.commit for a in state.admitted)],
        message=message,
        metadata=metadata,
        signer=signer,
    )
    repo.refs.set_ref(branch_ref(branch), oid, state.base)
    return oid


def commit_objects(repo: Repository, commit: ObjectId, *, attached: bool = False) -> list[ObjectId]:
    """The objects a receiver needs to hold ``commit``, parts before wholes (blobs, then
    their snapshot, then the commit), so it never stores an object whose parts it lacks.

    With ``attached``, the snapshots the commit names in its metadata (an update's
    Fisher) come first: a coordinator needs them to admit the update, while a client
    fetching a base has no use for its strategy state.
    """
    found = repo.get_commit(commit)
    snapshots = [*attached_snapshots(found).values()] if attached else []
    ids: list[ObjectId] = []
    for snapshot in (*snapshots, found.snapshot):
        ids += [entry.blob for entry in repo.get_snapshot(snapshot).tensors.values()]
        ids.append(snapshot)
    ids.append(commit)
    return list(dict.fromkeys(ids))


def wire_objects(repo: Repository, ids: Iterable[ObjectId]) -> Iterator[WireObject]:
    """Stored objects as they travel; unverified, since every receiver hashes each one
    on arrival."""
    for oid in ids:
        stored = repo.objects.get(oid, verify=False)
        yield WireObject(oid, stored.kind, stored.payload)
