"""Tests for fedvc.repo: committing and reading models, refs, revisions, history, opening.

Backend-independent behaviour runs against both a memory and a disk repository. Every
repository uses a fixed clock, so commit ids are the same on every run and on every backend.
"""

from __future__ import annotations

import mmap
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedvc.objects import ObjectId, short_id
from fedvc.repo import (
    REPO_DIR,
    BranchMovedError,
    Repository,
    RepositoryNotFoundError,
    RevisionError,
)
from fedvc.signing import SigningKey
from fedvc.store.base import ObjectNotFoundError, RefConflictError, StoreError
from fedvc.store.disk import MMAP_THRESHOLD
from fedvc.tensors import DTYPES

NOW = 1_700_000_000


def fixed_clock() -> float:
    return NOW


def make_repo(kind: str, path: Path) -> Repository:
    if kind == "memory":
        return Repository.memory(clock=fixed_clock)
    return Repository.init(path, clock=fixed_clock)


@pytest.fixture(params=["memory", "disk"])
def repo(request: pytest.FixtureRequest, tmp_path: Path) -> Repository:
    return make_repo(request.param, tmp_path)


def params(seed: int, **extra: np.ndarray) -> dict[str, np.ndarray]:
    """A tiny model whose weights depend on ``seed``."""
    rng = np.random.default_rng(seed)
    return {
        "layer.weight": rng.standard_normal((3, 2)).astype(np.float32),
        "layer.bias": np.full(3, seed, dtype=np.float32),
        **extra,
    }


def bits(array: np.ndarray) -> tuple[str, tuple[int, ...], bytes]:
    """What 'bit-identical' means: dtype, shape and the exact bytes."""
    return array.dtype.str, array.shape, array.tobytes()


def example_array(name: str, dtype: np.dtype[Any], shape: tuple[int, ...]) -> np.ndarray:
    rng = np.random.default_rng(zlib.crc32(f"{name}{shape}".encode()))
    size = int(np.prod(shape, dtype=np.int64))
    raw = rng.integers(0, 256, size=size * dtype.itemsize, dtype=np.uint8)
    if dtype == np.dtype("?"):
        raw = raw % 2
    return raw.view(dtype).reshape(shape)


# -- models in, models out --------------------------------------------------------------


@pytest.mark.parametrize("dtype_name", sorted(DTYPES))
def test_every_dtype_round_trips_bit_exactly(repo: Repository, dtype_name: str) -> None:
    dtype = DTYPES[dtype_name]
    model = {
        "matrix": example_array(dtype_name, dtype, (4, 3)),
        "scalar": example_array(dtype_name + "s", dtype, ()),
        "empty": np.zeros((0, 5), dtype=dtype),
        "empty_1d": np.zeros((0,), dtype=dtype),
        "vector": example_array(dtype_name + "v", dtype, (7,)),
    }
    repo.commit_params(model, "all shapes")
    back = repo.read_params()
    assert set(back) == set(model)
    for name, array in model.items():
        assert bits(back[name]) == bits(array), name


def test_special_float_bit_patterns_survive(repo: Repository) -> None:
    # NaNs with payloads, signed zeros, infinities and subnormals are kept bit for bit
    patterns = np.array(
        [0x7FC00001, 0xFFC12345, 0x80000000, 0x00000000, 0x7F800000, 0xFF800000, 0x00000001],
        dtype=np.uint32,
    )
    halfs = np.array([0x7E01, 0x8000, 0x0001, 0xFC00], dtype=np.uint16)
    model = {"f32": patterns.view(np.float32), "f16": halfs.view(np.float16)}
    repo.commit_params(model)
    back = repo.read_params()
    assert back["f32"].view(np.uint32).tolist() == patterns.tolist()
    assert back["f16"].view(np.uint16).tolist() == halfs.tolist()


def test_non_canonical_inputs_read_back_as_canonical_arrays(repo: Repository) -> None:
    values = np.arange(12, dtype=np.float64).reshape(3, 4)
    model = {
        "big_endian": values.astype(">f8"),
        "transposed": values.T,
        "strided": values[:, ::2],
        "list": [[1, 2], [3, 4]],
    }
    repo.commit_params(model)
    back = repo.read_params()
    assert back["big_endian"].dtype == np.dtype("<f8")
    np.testing.assert_array_equal(back["big_endian"], values)
    np.testing.assert_array_equal(back["transposed"], values.T)
    np.testing.assert_array_equal(back["strided"], values[:, ::2])
    np.testing.assert_array_equal(back["list"], [[1, 2], [3, 4]])


def test_read_params_returns_read_only_arrays(repo: Repository) -> None:
    repo.commit_params(params(1, scalar=np.float64(3.5) * np.ones(())))
    back = repo.read_params()
    for name, array in back.items():
        assert not array.flags.writeable, name
    with pytest.raises(ValueError):
        back["layer.bias"][0] = 42.0
    with pytest.raises(ValueError):
        back["scalar"][()] = 1.0
    assert repo.read_params()["layer.bias"].tolist() == [1.0, 1.0, 1.0]


def test_committing_does_not_keep_a_reference_to_the_callers_arrays(repo: Repository) -> None:
    model = params(1)
    repo.commit_params(model)
    model["layer.bias"][:] = 99.0
    assert repo.read_params()["layer.bias"].tolist() == [1.0, 1.0, 1.0]


def test_torch_state_dict_with_batchnorm_round_trips(repo: Repository) -> None:
    torch = pytest.importorskip("torch")
    torch_io = pytest.importorskip("fedvc.torch_io")
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3), torch.nn.ReLU(), torch.nn.Linear(3, 2)
    )
    model.train()
    model(torch.randn(8, 4))  # moves running_mean/var and num_batches_tracked
    state = model.state_dict()
    assert state["1.num_batches_tracked"].dtype == torch.int64

    oid = repo.commit_params(state, "torch model")
    back = repo.read_params(oid)
    assert set(back) == set(state)
    for name, tensor in state.items():
        assert bits(back[name]) == bits(tensor.numpy()), name

    fresh = torch.nn.Sequential(
        torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3), torch.nn.ReLU(), torch.nn.Linear(3, 2)
    )
    torch_io.load_into_module(fresh, back)
    for name, tensor in fresh.state_dict().items():
        assert tensor.dtype == state[name].dtype, name
        assert torch.equal(tensor, state[name]), name


def test_read_params_of_any_revision(repo: Repository) -> None:
    first = repo.commit_params(params(1), "one")
    repo.commit_params(params(2), "two")
    assert repo.read_params(first)["layer.bias"].tolist() == [1.0] * 3
    assert repo.read_params("main~1")["layer.bias"].tolist() == [1.0] * 3
    assert repo.read_params()["layer.bias"].tolist() == [2.0] * 3


def test_equal_tensors_share_one_blob(repo: Repository) -> None:
    shared = np.arange(6, dtype=np.float32)
    a = repo.get_commit(repo.commit_params({"x": shared, "y": shared.copy()})).snapshot
    b = repo.get_commit(repo.commit_params({"z": shared, "w": np.ones(2)})).snapshot
    entries_a = repo.get_snapshot(a).tensors
    entries_b = repo.get_snapshot(b).tensors
    assert entries_a["x"].blob == entries_a["y"].blob == entries_b["z"].blob


# -- determinism --------------------------------------------------------------------------


def commit_fixed_history(repo: Repository) -> list[ObjectId]:
    key = SigningKey.from_seed(bytes(range(32)))
    first = repo.commit_params(params(1), "first", metadata={"round": 1, "lr": 0.1})
    second = repo.commit_params(
        params(2), "second", metadata={"round": 2, "clients": ["a", "b"]}, signer=key
    )
    third = repo.commit_params(params(3), "third", timestamp=1234, signer=key)
    return [first, second, third]


def test_same_inputs_give_the_same_commit_ids_across_fresh_repositories(tmp_path: Path) -> None:
    ids = [
        commit_fixed_history(Repository.memory(clock=fixed_clock)),
        commit_fixed_history(Repository.memory(clock=fixed_clock)),
        commit_fixed_history(Repository.init(tmp_path / "one", clock=fixed_clock)),
        commit_fixed_history(Repository.init(tmp_path / "two", bare=True, clock=fixed_clock)),
    ]
    assert ids[0] == ids[1] == ids[2] == ids[3]
    assert len(set(ids[0])) == 3


@pytest.mark.parametrize(
    "change",
    [
        {"message": "other"},
        {"metadata": {"round": 2}},
        {"timestamp": NOW + 1},
        {"signer": SigningKey.from_seed(bytes(32))},
        {"params": params(9)},
    ],
    ids=["message", "metadata", "timestamp", "signer", "params"],
)
def test_any_changed_input_gives_another_commit_id(change: dict[str, Any]) -> None:
    def commit(**kwargs: Any) -> ObjectId:
        arguments: dict[str, Any] = {"params": params(1), "message": "m", "metadata": {}}
        arguments.update(kwargs)
        return Repository.memory(clock=fixed_clock).commit_params(**arguments)

    assert commit() == commit()
    assert commit(**change) != commit()


def test_commit_timestamp_comes_from_the_clock_unless_given(repo: Repository) -> None:
    assert repo.get_commit(repo.commit_params(params(1))).timestamp == NOW
    assert repo.get_commit(repo.commit_params(params(2), timestamp=5)).timestamp == 5


# -- branches and parents -----------------------------------------------------------------


def test_commit_moves_the_branch_and_parents_default_to_its_tip(repo: Repository) -> None:
    assert repo.branches() == {}
    first = repo.commit_params(params(1), "first")
    assert repo.branches() == {"main": first}
    assert repo.get_commit(first).parents == ()
    second = repo.commit_params(params(2), "second")
    assert repo.branches() == {"main": second}
    assert repo.get_commit(second).parents == (first,)
    assert repo.get_commit(second).message == "second"


def test_commit_on_another_branch_leaves_head_branch_alone(repo: Repository) -> None:
    base = repo.commit_params(params(1))
    repo.create_branch("dev")
    dev = repo.commit_params(params(2), branch="dev")
    assert repo.get_commit(dev).parents == (base,)
    assert repo.branches() == {"main": base, "dev": dev}
    orphan = repo.commit_params(params(3), branch="orphan")
    assert repo.get_commit(orphan).parents == ()
    assert repo.resolve("HEAD") == base


def test_init_branch_name_becomes_head(tmp_path: Path) -> None:
    repo = Repository.init(tmp_path, branch="trunk", clock=fixed_clock)
    assert repo.head_branch == "trunk"
    oid = repo.commit_params(params(1))
    assert repo.branches() == {"trunk": oid}
    assert Repository.open(tmp_path).resolve("HEAD") == oid


def test_octopus_merge_records_parents_in_order(repo: Repository) -> None:
    base = repo.commit_params(params(0), "base")
    updates = [
        repo.write_commit(repo.write_snapshot(params(i)), parents=[base], message=f"client {i}")
        for i in (1, 2, 3)
    ]
    order = [base, updates[2], updates[0]]
    merge = repo.commit_params(params(4), "merge", parents=order)
    assert repo.get_commit(merge).parents == tuple(order)
    assert repo.branches()["main"] == merge


def test_write_commit_refuses_a_parent_that_does_not_exist(repo: Repository) -> None:
    repo.commit_params(params(1))
    snapshot = repo.write_snapshot(params(2))
    before = set(repo.objects.iter_ids())
    ghost = ObjectId("ab" * 32)
    with pytest.raises(ObjectNotFoundError, match=ghost) as info:
        repo.write_commit(snapshot, parents=[ghost])
    assert "not in the store" in str(info.value)
    assert set(repo.objects.iter_ids()) == before  # no commit was stored


def test_commit_params_with_a_missing_parent_leaves_the_branch_alone(repo: Repository) -> None:
    tip = repo.commit_params(params(1))
    with pytest.raises(ObjectNotFoundError):
        repo.commit_params(params(2), parents=[tip, ObjectId("cd" * 32)])
    assert repo.branches() == {"main": tip}


def test_write_commit_refuses_a_parent_that_is_not_a_commit(repo: Repository) -> None:
    snapshot = repo.write_snapshot(params(1))
    with pytest.raises(RevisionError, match="not a commit"):
        repo.write_commit(snapshot, parents=[snapshot])


# -- revisions ----------------------------------------------------------------------------


def linear(repo: Repository, count: int) -> list[ObjectId]:
    return [repo.commit_params(params(i), f"commit {i}") for i in range(count)]


def test_resolve_full_id_and_prefixes(repo: Repository) -> None:
    oids = linear(repo, 3)
    for oid in oids:
        assert repo.resolve(oid) == oid
        assert repo.resolve(oid[:12]) == oid
        assert repo.resolve(f"  {oid[:20]}\n") == oid
    # four hex digits are enough when they are unique, three never are
    unique4 = [oid for oid in oids if sum(o.startswith(oid[:4]) for o in oids) == 1]
    assert unique4
    assert repo.resolve(unique4[0][:4]) == unique4[0]
    with pytest.raises(RevisionError, match="at least 4 hex digits"):
        repo.resolve(oids[0][:3])


def test_ambiguous_prefix_is_an_error_naming_the_candidates(repo: Repository) -> None:
    snapshot = repo.write_snapshot(params(1))
    by_prefix: dict[str, ObjectId] = {}
    pair: tuple[ObjectId, ObjectId] | None = None
    for attempt in range(5000):
        oid = repo.write_commit(snapshot, message=f"attempt {attempt}")
        if oid[:4] in by_prefix:
            pair = (by_prefix[oid[:4]], oid)
            break
        by_prefix[oid[:4]] = oid
    assert pair is not None
    prefix = pair[0][:4]
    with pytest.raises(RevisionError, match="ambiguous") as info:
        repo.resolve(prefix)
    message = str(info.value)
    assert prefix in message
    assert short_id(pair[0]) in message
    assert short_id(pair[1]) in message
    # enough digits pick one
    differ = next(i for i, (a, b) in enumerate(zip(*pair, strict=True)) if a != b)
    for oid in pair:
        assert repo.resolve(oid) == oid
        assert repo.resolve(oid[: differ + 1]) == oid


def test_unknown_revision_mentions_the_existing_branches(repo: Repository) -> None:
    linear(repo, 1)
    repo.create_branch("experiment")
    with pytest.raises(RevisionError) as info:
        repo.resolve("nope")
    message = str(info.value)
    assert "'nope'" in message
    assert "main" in message
    assert "experiment" in message
    with pytest.raises(RevisionError, match="unknown revision"):
        repo.resolve("0000" + "f" * 60)  # well-formed id, no such commit


def test_unknown_revision_in_an_empty_repository_says_there_are_no_branches(
    repo: Repository,
) -> None:
    with pytest.raises(RevisionError, match="branches: none"):
        repo.resolve("main")


def test_blob_and_snapshot_ids_are_not_revisions(repo: Repository) -> None:
    oid = repo.commit_params(params(1))
    snapshot = repo.get_commit(oid).snapshot
    blob = repo.get_snapshot(snapshot).tensors["layer.bias"].blob
    for other in (snapshot, blob):
        with pytest.raises(RevisionError):
            repo.resolve(other)


def test_head_on_an_empty_repository_gives_a_helpful_error(repo: Repository) -> None:
    with pytest.raises(RevisionError) as info:
        repo.resolve("HEAD")
    message = str(info.value)
    assert "main" in message
    assert "no commits yet" in message
    with pytest.raises(RevisionError, match="no commits yet"):
        repo.read_params()
    with pytest.raises(RevisionError, match="no commits yet"):
        repo.log()


@pytest.mark.parametrize("bad", ["", "   ", "~1", "^", "main~x", "main^-1", "a b~1~"])
def test_malformed_revisions_are_rejected(repo: Repository, bad: str) -> None:
    linear(repo, 1)
    with pytest.raises(RevisionError):
        repo.resolve(bad)


def test_tilde_and_caret_walk_first_parents(repo: Repository) -> None:
    a, b, c, d = linear(repo, 4)
    assert repo.resolve("main~0") == d
    assert repo.resolve("main~") == c
    assert repo.resolve("main~1") == c
    assert repo.resolve("main~2") == b
    assert repo.resolve("HEAD~3") == a
    assert repo.resolve("main^") == c
    assert repo.resolve("main^1") == c
    assert repo.resolve("main^^") == b
    assert repo.resolve("main~1^1~1") == a
    assert repo.resolve(f"{d[:10]}~2") == b
    assert repo.resolve("HEAD^0") == d
    assert repo.resolve(f"{b}^0") == b


def test_tilde_beyond_the_root_is_an_error_naming_the_root(repo: Repository) -> None:
    root, _, _ = linear(repo, 3)
    assert repo.resolve("main~2") == root
    with pytest.raises(RevisionError) as info:
        repo.resolve("main~3")
    assert "root" in str(info.value)
    assert short_id(root) in str(info.value)
    with pytest.raises(RevisionError, match="0 parents"):
        repo.resolve(f"{root}^")


def test_caret_n_selects_the_nth_parent_of_an_octopus_merge(repo: Repository) -> None:
    base = repo.commit_params(params(0), "base")
    sides = [
        repo.write_commit(repo.write_snapshot(params(i)), parents=[base], message=f"side {i}")
        for i in (1, 2)
    ]
    merge = repo.commit_params(params(3), "merge", parents=[base, *sides])
    assert repo.resolve("HEAD^") == base
    assert repo.resolve("HEAD^1") == base
    assert repo.resolve("HEAD^2") == sides[0]
    assert repo.resolve("HEAD^3") == sides[1]
    assert repo.resolve("HEAD^3~1") == base
    assert repo.resolve("HEAD^0") == merge
    assert repo.resolve("HEAD~1") == base
    with pytest.raises(RevisionError, match="3 parents"):
        repo.resolve("HEAD^4")


def test_branches_and_tags(repo: Repository) -> None:
    a, b = linear(repo, 2)
    assert repo.create_tag("v1", "main~1") == a
    assert repo.create_branch("stable", "v1") == a
    assert repo.resolve("v1") == a
    assert repo.resolve("refs/tags/v1") == a
    assert repo.resolve("stable") == a
    assert repo.resolve("refs/heads/stable") == a
    assert repo.resolve("v1~0") == a
    assert repo.tags() == {"v1": a}
    assert repo.branches() == {"main": b, "stable": a}
    nested = repo.create_branch("team/alice")
    assert nested == b
    assert repo.resolve("team/alice") == b


def test_tag_creation_refuses_to_move_an_existing_tag_without_force(repo: Repository) -> None:
    a, b = linear(repo, 2)
    repo.create_tag("v1", a)
    with pytest.raises(RefConflictError) as info:
        repo.create_tag("v1", b)
    assert "refs/tags/v1" in str(info.value)
    assert repo.tags() == {"v1": a}
    assert repo.create_tag("v1", b, force=True) == b
    assert repo.tags() == {"v1": b}


def test_branch_creation_refuses_to_move_an_existing_branch_without_force(
    repo: Repository,
) -> None:
    a, b = linear(repo, 2)
    with pytest.raises(RefConflictError):
        repo.create_branch("main", a)
    assert repo.branches() == {"main": b}
    repo.create_branch("main", a, force=True)
    assert repo.branches() == {"main": a}


def test_refs_to_unknown_revisions_are_not_created(repo: Repository) -> None:
    linear(repo, 1)
    with pytest.raises(RevisionError):
        repo.create_tag("v1", "nope")
    with pytest.raises(StoreError, match="invalid ref name"):
        repo.create_branch("bad..name")
    assert repo.tags() == {}


# -- history ------------------------------------------------------------------------------


def test_log_is_newest_first_and_limit_keeps_the_newest(repo: Repository) -> None:
    oids = linear(repo, 5)
    log = repo.log()
    assert [oid for oid, _ in log] == oids[::-1]
    assert [commit.message for _, commit in log] == [f"commit {i}" for i in range(4, -1, -1)]
    assert [oid for oid, _ in repo.log(limit=2)] == oids[:2:-1][:2]
    assert [oid for oid, _ in repo.log("main~2", limit=10)] == oids[2::-1]
    assert repo.log(limit=0) == []


def merged_history(repo: Repository) -> dict[str, ObjectId]:
    """main: a(1) - b(2) - c(3) - m(20, parents c, x); side: a - x(10)."""
    a = repo.commit_params(params(1), "a", timestamp=1)
    b = repo.commit_params(params(2), "b", timestamp=2)
    c = repo.commit_params(params(3), "c", timestamp=3)
    x = repo.write_commit(repo.write_snapshot(params(4)), parents=[a], message="x", timestamp=10)
    m = repo.commit_params(params(5), "m", parents=[c, x], timestamp=20)
    return {"a": a, "b": b, "c": c, "x": x, "m": m}


def test_log_of_a_merge_is_topological_and_newest_first(repo: Repository) -> None:
    ids = merged_history(repo)
    names = {oid: name for name, oid in ids.items()}
    assert [names[oid] for oid, _ in repo.log()] == ["m", "x", "c", "b", "a"]
    assert [names[oid] for oid, _ in repo.log(limit=3)] == ["m", "x", "c"]


def test_log_first_parent_follows_the_mainline(repo: Repository) -> None:
    ids = merged_history(repo)
    names = {oid: name for name, oid in ids.items()}
    assert [names[oid] for oid, _ in repo.log(first_parent=True)] == ["m", "c", "b", "a"]
    assert [names[oid] for oid, _ in repo.log(ids["x"], first_parent=True)] == ["x", "a"]


def test_log_never_shows_a_parent_before_its_child(repo: Repository) -> None:
    base = repo.commit_params(params(0), "base", timestamp=100)
    # an old clock on the clients must not put them after their (older-looking) base
    sides = [
        repo.write_commit(
            repo.write_snapshot(params(i)), parents=[base], message=f"client {i}", timestamp=i
        )
        for i in (1, 2, 3)
    ]
    merge = repo.commit_params(params(9), "merge", parents=[base, *sides], timestamp=50)
    order = [oid for oid, _ in repo.log()]
    assert order[0] == merge
    assert order[-1] == base
    assert set(order) == {base, merge, *sides}
    for oid, commit in repo.log():
        for parent in commit.parents:
            assert order.index(parent) > order.index(oid)


# -- opening ------------------------------------------------------------------------------


def test_discover_finds_the_repository_from_a_nested_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    oid = Repository.init(tmp_path, clock=fixed_clock).commit_params(params(1))
    nested = tmp_path / "a" / "b" / "c"
    nested.mkdir(parents=True)
    found = Repository.discover(nested)
    assert found.path == (tmp_path / REPO_DIR).resolve()
    assert found.resolve("HEAD") == oid
    monkeypatch.chdir(nested)
    assert Repository.discover().resolve("HEAD") == oid
    assert Repository.discover(tmp_path / REPO_DIR / "objects").resolve("HEAD") == oid


def test_discover_outside_any_repository_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(RepositoryNotFoundError, match="fedvc init") as info:
        Repository.discover(tmp_path)
    assert "--repo" in str(info.value)


def test_open_of_a_directory_without_a_repository_hints_at_init(tmp_path: Path) -> None:
    with pytest.raises(RepositoryNotFoundError, match="fedvc init") as info:
        Repository.open(tmp_path)
    assert str(tmp_path) in str(info.value)
    with pytest.raises(RepositoryNotFoundError, match="fedvc init"):
        Repository.open(tmp_path / "does-not-exist")


def test_open_finds_the_store_in_the_working_directory_or_directly(tmp_path: Path) -> None:
    oid = Repository.init(tmp_path, clock=fixed_clock).commit_params(params(1))
    for where in (tmp_path, tmp_path / REPO_DIR, str(tmp_path)):
        reopened = Repository.open(where)
        assert reopened.path == tmp_path / REPO_DIR
        assert reopened.resolve("HEAD") == oid
        assert bits(reopened.read_params()["layer.weight"]) == bits(params(1)["layer.weight"])


def test_init_twice_is_an_error_and_keeps_the_repository(tmp_path: Path) -> None:
    oid = Repository.init(tmp_path, clock=fixed_clock).commit_params(params(1))
    with pytest.raises(StoreError, match="already holds a fedvc repository"):
        Repository.init(tmp_path)
    with pytest.raises(StoreError, match="already holds a fedvc repository"):
        Repository.init(tmp_path / REPO_DIR, bare=True)
    assert Repository.open(tmp_path).resolve("HEAD") == oid


def test_bare_init_puts_the_store_in_the_directory_itself(tmp_path: Path) -> None:
    store = tmp_path / "models.fedvc"
    repo = Repository.init(store, bare=True, clock=fixed_clock)
    assert repo.path == store
    assert (store / "fedvc.db").is_file()
    assert (store / "objects").is_dir()
    assert not (store / REPO_DIR).exists()
    oid = repo.commit_params(params(1))
    assert Repository.open(store).resolve("HEAD") == oid
    assert Repository.discover(store).resolve("HEAD") == oid


def test_disk_objects_are_laid_out_by_hash(tmp_path: Path) -> None:
    repo = Repository.init(tmp_path, clock=fixed_clock)
    oid = repo.commit_params(params(1))
    path = tmp_path / REPO_DIR / "objects" / oid[:2] / oid[2:]
    assert path.is_file()
    assert path.read_bytes().startswith(b"commit ")
    assert set(repo.objects.iter_ids()) == {
        ObjectId(p.parent.name + p.name) for p in (tmp_path / REPO_DIR / "objects").glob("*/*")
    }


# -- concurrent writers -------------------------------------------------------------------


def rival_for(repo: Repository, kind: str) -> Repository:
    """Another writer on the same store: a second Repository object on disk."""
    return repo if kind == "memory" else Repository.open(repo.path or "", clock=fixed_clock)


@pytest.mark.parametrize("kind", ["memory", "disk"])
@pytest.mark.parametrize("start_empty", [False, True], ids=["has-tip", "empty"])
def test_branch_moved_while_committing_keeps_the_commit_and_says_so(
    kind: str, start_empty: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = make_repo(kind, tmp_path)
    tip = None if start_empty else repo.commit_params(params(1), "tip")
    rival = rival_for(repo, kind)
    moved: list[ObjectId] = []
    real_write_commit = repo.write_commit

    def write_commit_after_a_rival(snapshot: ObjectId, **kwargs: Any) -> ObjectId:
        # another writer commits on main after we read the tip (only once: in memory the
        # rival is this very repository, so its commit comes back through this function)
        if not moved:
            moved.append(ObjectId(""))
            moved[0] = rival.commit_params(params(2), "rival")
        return real_write_commit(snapshot, **kwargs)

    monkeypatch.setattr(repo, "write_commit", write_commit_after_a_rival)
    with pytest.raises(BranchMovedError) as info:
        repo.commit_params(params(3), "mine")
    error = info.value
    ours, theirs = error.commit, moved[0]
    assert isinstance(error, RefConflictError)
    assert error.actual == theirs
    assert error.expected == tip
    message = str(error)
    assert "commit is stored" in message
    assert short_id(ours) in message
    assert short_id(theirs) in message
    assert "main" in message
    # nothing was lost: our commit exists with the tip we read as parent, main is theirs
    assert repo.objects.contains(ours)
    assert repo.get_commit(ours).message == "mine"
    assert repo.get_commit(ours).parents == (() if tip is None else (tip,))
    assert repo.branches() == {"main": theirs}
    assert bits(repo.read_params(ours)["layer.bias"]) == bits(params(3)["layer.bias"])
    assert repo.resolve(short_id(ours)) == ours


def test_two_repository_objects_on_one_store_see_each_others_commits(tmp_path: Path) -> None:
    one = Repository.init(tmp_path, clock=fixed_clock)
    two = Repository.open(tmp_path, clock=fixed_clock)
    a = one.commit_params(params(1))
    b = two.commit_params(params(2))
    assert two.get_commit(b).parents == (a,)
    assert one.resolve("HEAD") == b
    assert [oid for oid, _ in one.log()] == [b, a]


# -- zero copy ----------------------------------------------------------------------------


def buffer_owners(array: np.ndarray) -> list[object]:
    """Every object in the chain of buffers an array's memory comes from."""
    owners: list[object] = []
    current: object = array
    while current is not None and len(owners) < 32:
        owners.append(current)
        if isinstance(current, np.ndarray):
            current = current.base
        elif isinstance(current, memoryview):
            current = current.obj
        else:
            break
    return owners


def test_large_tensors_on_disk_are_memory_mapped(tmp_path: Path) -> None:
    repo = Repository.init(tmp_path, clock=fixed_clock)
    large = np.arange(MMAP_THRESHOLD // 4 + 1024, dtype=np.float32)
    assert large.nbytes > MMAP_THRESHOLD
    small = np.arange(16, dtype=np.float32)
    repo.commit_params({"large": large, "small": small})
    back = Repository.open(tmp_path).read_params()
    assert bits(back["large"]) == bits(large)
    assert not back["large"].flags.writeable
    assert any(isinstance(owner, mmap.mmap) for owner in buffer_owners(back["large"]))
    assert not any(isinstance(owner, mmap.mmap) for owner in buffer_owners(back["small"]))
