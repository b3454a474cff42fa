"""Tests for fedvc.graph: history order, ancestry, merge bases and the objects a sync sends."""

from __future__ import annotations

import numpy as np
import pytest

from fedvc import graph
from fedvc.objects import Commit, ObjectId, hash_object
from fedvc.repo import Repository
from fedvc.tensors import tensor_bytes

SNAPSHOT = ObjectId("5" * 64)


class Dag:
    """Commits held in a dict, built by name: graph functions only need a loader."""

    def __init__(self) -> None:
        self.commits: dict[ObjectId, Commit] = {}
        self.ids: dict[str, ObjectId] = {}
        self.names: dict[ObjectId, str] = {}
        self.loads = 0

    def add(self, name: str, *parents: str, ts: int) -> ObjectId:
        commit = Commit(
            snapshot=SNAPSHOT,
            parents=tuple(self.ids[p] for p in parents),
            timestamp=ts,
            message=name,
        )
        oid = hash_object("commit", commit.encode())
        self.commits[oid] = commit
        self.ids[name] = oid
        self.names[oid] = name
        return oid

    def load(self, oid: ObjectId) -> Commit:
        self.loads += 1
        return self.commits[oid]

    def history(self, *heads: str, first_parent: bool = False) -> list[str]:
        entries = graph.history(self.load, [self.ids[h] for h in heads], first_parent=first_parent)
        for oid, commit in entries:
            assert self.commits[oid] == commit
        return [self.names[oid] for oid, _ in entries]

    def ancestors(self, *heads: str, first_parent: bool = False) -> list[str]:
        found = graph.ancestors(self.load, [self.ids[h] for h in heads], first_parent=first_parent)
        return [self.names[oid] for oid in found]

    def is_ancestor(self, ancestor: str, descendant: str) -> bool:
        return graph.is_ancestor(self.load, self.ids[ancestor], self.ids[descendant])

    def merge_base(self, a: str, b: str) -> str | None:
        base = graph.merge_base(self.load, self.ids[a], self.ids[b])
        return None if base is None else self.names[base]


def assert_topological(dag: Dag, order: list[str]) -> None:
    """No commit is listed before any of its children."""
    position = {name: i for i, name in enumerate(order)}
    for name in order:
        for parent in dag.commits[dag.ids[name]].parents:
            parent_name = dag.names[parent]
            if parent_name in position:
                assert position[parent_name] > position[name], (name, parent_name)


@pytest.fixture
def linear() -> Dag:
    dag = Dag()
    dag.add("a", ts=1)
    dag.add("b", "a", ts=2)
    dag.add("c", "b", ts=3)
    dag.add("d", "c", ts=4)
    return dag


@pytest.fixture
def fork() -> Dag:
    """a - b - c (main) and b - x - y (side), merged as m = merge(c, y)."""
    dag = Dag()
    dag.add("a", ts=1)
    dag.add("b", "a", ts=2)
    dag.add("c", "b", ts=3)
    dag.add("x", "b", ts=4)
    dag.add("y", "x", ts=6)
    dag.add("m", "c", "y", ts=7)
    return dag


@pytest.fixture
def octopus() -> Dag:
    """A federated round: base r, three client updates u1..u3, merge m of all three."""
    dag = Dag()
    dag.add("root", ts=1)
    dag.add("r", "root", ts=2)
    dag.add("u1", "r", ts=5)
    dag.add("u2", "r", ts=3)
    dag.add("u3", "r", ts=4)
    dag.add("m", "r", "u1", "u2", "u3", ts=6)
    dag.add("next", "m", ts=7)
    dag.add("late", "u3", ts=8)  # a client kept training after the round
    return dag


@pytest.fixture
def criss_cross() -> Dag:
    """p and q each merge the other's first commit: two equally good merge bases."""
    dag = Dag()
    dag.add("root", ts=1)
    dag.add("p1", "root", ts=2)
    dag.add("q1", "root", ts=3)
    dag.add("p2", "p1", "q1", ts=4)
    dag.add("q2", "q1", "p1", ts=5)
    dag.add("p3", "p2", ts=6)
    dag.add("q3", "q2", ts=7)
    return dag


# --- history -----------------------------------------------------------------------------


def test_history_linear(linear: Dag) -> None:
    assert linear.history("d") == ["d", "c", "b", "a"]
    assert linear.history("b") == ["b", "a"]
    assert linear.history("a") == ["a"]
    assert linear.history("d", first_parent=True) == ["d", "c", "b", "a"]


def test_history_fork_newest_first_among_ready(fork: Dag) -> None:
    # After m, both c (ts 3) and y (ts 6) are ready: y is newer, so the side branch comes
    # first, and b only after both of its children c and x.
    assert fork.history("m") == ["m", "y", "x", "c", "b", "a"]
    assert fork.history("c", "y") == ["y", "x", "c", "b", "a"]
    assert fork.history("m", first_parent=True) == ["m", "c", "b", "a"]


def test_history_never_shows_a_parent_before_its_child() -> None:
    # Clock skew: children older than their parents. Topology beats timestamps.
    dag = Dag()
    dag.add("a", ts=100)
    dag.add("b", "a", ts=50)
    dag.add("c", "a", ts=300)
    dag.add("d", "b", ts=1)
    dag.add("m", "d", "c", ts=0)
    order = dag.history("m")
    assert order == ["m", "c", "d", "b", "a"]
    assert_topological(dag, order)


def test_history_ties_broken_by_id() -> None:
    dag = Dag()
    dag.add("root", ts=1)
    tips = [dag.add(f"t{i}", "root", ts=5) for i in range(5)]
    order = graph.history(dag.load, tips)
    assert [oid for oid, _ in order[:-1]] == sorted(tips)
    assert dag.names[order[-1][0]] == "root"


def test_history_octopus(octopus: Dag) -> None:
    order = octopus.history("next")
    assert order == ["next", "m", "u1", "u3", "u2", "r", "root"]
    assert octopus.history("next", first_parent=True) == ["next", "m", "r", "root"]
    both = octopus.history("next", "late")
    assert both == ["late", "next", "m", "u1", "u3", "u2", "r", "root"]
    assert_topological(octopus, both)


def test_history_lists_each_commit_once(criss_cross: Dag) -> None:
    order = criss_cross.history("p3", "q3", "p2", "root")
    assert sorted(order) == sorted(criss_cross.ids)
    assert len(order) == len(set(order))
    assert_topological(criss_cross, order)
    assert order == ["q3", "p3", "q2", "p2", "q1", "p1", "root"]


def test_history_through_repository_log() -> None:
    clock = iter(range(100, 200))
    repo = Repository.memory(clock=lambda: next(clock))
    ids = [repo.commit_params({"w": np.full(2, i, dtype=np.float32)}, f"c{i}") for i in range(4)]
    assert [oid for oid, _ in repo.log()] == ids[::-1]
    assert [c.message for _, c in repo.log(limit=2)] == ["c3", "c2"]
    assert [oid for oid, _ in repo.log(ids[1])] == ids[1::-1]


def test_ancestors(fork: Dag) -> None:
    assert set(fork.ancestors("m")) == set(fork.ids)
    assert fork.ancestors("m", first_parent=True) == ["m", "c", "b", "a"]
    assert fork.ancestors("y") == ["y", "x", "b", "a"]
    assert sorted(fork.ancestors("c", "y")) == ["a", "b", "c", "x", "y"]
    assert fork.ancestors("c", "c") == ["c", "b", "a"]


# --- ancestry ------------------------------------------------------------------------------


def test_is_ancestor_linear(linear: Dag) -> None:
    assert linear.is_ancestor("a", "d")
    assert linear.is_ancestor("c", "d")
    assert linear.is_ancestor("d", "d")  # a commit is its own ancestor
    assert not linear.is_ancestor("d", "a")
    assert not linear.is_ancestor("c", "b")


def test_is_ancestor_fork_and_merge(fork: Dag, octopus: Dag) -> None:
    assert fork.is_ancestor("x", "m")  # through the second parent
    assert fork.is_ancestor("c", "m")
    assert not fork.is_ancestor("x", "c")
    assert not fork.is_ancestor("c", "y")
    for update in ("u1", "u2", "u3"):
        assert octopus.is_ancestor(update, "m")
        assert octopus.is_ancestor(update, "next")
        assert not octopus.is_ancestor("m", update)
    assert octopus.is_ancestor("u3", "late")
    assert not octopus.is_ancestor("u1", "late")


# --- merge bases -----------------------------------------------------------------------------


def test_merge_base_linear(linear: Dag) -> None:
    assert linear.merge_base("d", "b") == "b"
    assert linear.merge_base("b", "d") == "b"
    assert linear.merge_base("c", "c") == "c"
    assert linear.merge_base("a", "d") == "a"


def test_merge_base_fork(fork: Dag) -> None:
    assert fork.merge_base("c", "y") == "b"
    assert fork.merge_base("y", "c") == "b"
    assert fork.merge_base("c", "x") == "b"
    assert fork.merge_base("m", "y") == "y"
    assert fork.merge_base("m", "c") == "c"


def test_merge_base_octopus(octopus: Dag) -> None:
    assert octopus.merge_base("u1", "u2") == "r"
    assert octopus.merge_base("u1", "u3") == "r"
    assert octopus.merge_base("m", "u2") == "u2"
    assert octopus.merge_base("next", "late") == "u3"
    assert octopus.merge_base("late", "next") == "u3"
    assert octopus.merge_base("late", "u1") == "r"


def test_merge_base_criss_cross_newest_wins(criss_cross: Dag) -> None:
    # p1 and q1 are both best common ancestors (neither descends from the other);
    # root is common too but dominated. The newer one, q1, wins, whichever side asks.
    assert criss_cross.merge_base("p2", "q2") == "q1"
    assert criss_cross.merge_base("q2", "p2") == "q1"
    assert criss_cross.merge_base("p3", "q3") == "q1"
    assert criss_cross.merge_base("q3", "p3") == "q1"


def test_merge_base_criss_cross_tie_goes_to_smallest_id() -> None:
    dag = Dag()
    dag.add("root", ts=1)
    p1 = dag.add("p1", "root", ts=2)
    q1 = dag.add("q1", "root", ts=2)
    dag.add("p2", "p1", "q1", ts=3)
    dag.add("q2", "q1", "p1", ts=3)
    expected = dag.names[min(p1, q1)]
    assert dag.merge_base("p2", "q2") == expected
    assert dag.merge_base("q2", "p2") == expected


def test_merge_base_unrelated_histories() -> None:
    dag = Dag()
    dag.add("a", ts=1)
    dag.add("b", "a", ts=2)
    dag.add("z", ts=3)
    assert dag.merge_base("b", "z") is None
    assert not dag.is_ancestor("a", "z")


# --- objects to sync ---------------------------------------------------------------------------


def model(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"layer{i}": rng.standard_normal(5).astype(np.float32) for i in range(10)}


def test_missing_objects_one_changed_tensor() -> None:
    repo = Repository.memory(clock=lambda: 1_700_000_000)
    params = model(0)
    first = repo.commit_params(params, "first")
    changed = dict(params)
    changed["layer3"] = params["layer3"] * 2
    second = repo.commit_params(changed, "second")

    missing = graph.missing_objects(repo.get_commit, repo.get_snapshot, [second], [first])
    new_blob = hash_object("blob", bytes(tensor_bytes(changed["layer3"])))
    assert missing == {second, repo.get_commit(second).snapshot, new_blob}
    assert graph.missing_objects(repo.get_commit, repo.get_snapshot, [first], [second]) == set()
    assert graph.missing_objects(repo.get_commit, repo.get_snapshot, [second], [second]) == set()

    everything = graph.missing_objects(repo.get_commit, repo.get_snapshot, [second], [])
    assert everything == set(repo.objects.iter_ids())
    assert len(everything) == 11 + 2 + 2  # 11 distinct blobs, 2 snapshots, 2 commits


def test_missing_objects_across_a_merge() -> None:
    repo = Repository.memory(clock=lambda: 1_700_000_000)
    base = repo.commit_params(model(0), "base")
    left = dict(model(0), layer0=np.zeros(5, dtype=np.float32))
    right = dict(model(0), layer9=np.ones(5, dtype=np.float32))
    a = repo.commit_params(left, "left")
    b = repo.commit_params(right, "right", branch="side", parents=[base])
    merged = dict(left, layer9=right["layer9"])
    m = repo.commit_params(merged, "merge", parents=[a, b])
    missing = graph.missing_objects(repo.get_commit, repo.get_snapshot, [m], [a])
    snapshot_of = {oid: repo.get_commit(oid).snapshot for oid in (b, m)}
    # The merge reuses the right side's new blob: it is sent once, with b and m.
    assert missing == {
        b,
        m,
        snapshot_of[b],
        snapshot_of[m],
        hash_object("blob", bytes(tensor_bytes(right["layer9"]))),
    }
    assert graph.missing_objects(repo.get_commit, repo.get_snapshot, [m], [a, b]) == {
        m,
        snapshot_of[m],
    }


def test_reachable_objects_shares_snapshots() -> None:
    repo = Repository.memory(clock=lambda: 1_700_000_000)
    first = repo.commit_params(model(1), "one")
    second = repo.commit_params(model(1), "same model again")
    assert repo.get_commit(first).snapshot == repo.get_commit(second).snapshot
    found = graph.reachable_objects(repo.get_commit, repo.get_snapshot, [second])
    assert found == set(repo.objects.iter_ids())
    assert len(found) == 10 + 1 + 2
