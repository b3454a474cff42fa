"""Tests for fedvc.verify against a real disk repository, damaged in every way we can think of.

One small signed history is built once per module (fixed clock, seeded keys, so every id
is the same on every run); each test damages its own copy of the store directory and checks
that ``verify`` names exactly the damaged object, says where it is used and what was found,
and keeps going.

History (all signed; ``u1``/``u2`` are client updates merged by the 3-parent ``m``)::

    c0 -- c1 -- m -- c2          main (c2 re-commits c1's model: same snapshot)
           \\   /|
            u1 / |               bob
             \\  /
              u2                 carol
"""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedvc.objects import (
    Commit,
    ObjectId,
    Snapshot,
    TensorEntry,
    canonical_json,
    hash_object,
    object_header,
    short_id,
)
from fedvc.repo import REPO_DIR, Repository
from fedvc.signing import SigningKey, sign_commit
from fedvc.trust import TrustStore
from fedvc.verify import Problem, VerifyReport, verify

NOW = 1_700_000_000
ALICE = SigningKey.from_seed(bytes([1]) * 32)
BOB = SigningKey.from_seed(bytes([2]) * 32)
CAROL = SigningKey.from_seed(bytes([3]) * 32)
MALLORY = SigningKey.from_seed(bytes([66]) * 32)
ALL_KEYS = TrustStore([ALICE.public_key, BOB.public_key, CAROL.public_key])

COMMITS = 6
SNAPSHOTS = 5  # c2 shares c1's snapshot
BLOBS = 12


def fixed_clock() -> float:
    return NOW


def tensor(seed: int, shape: tuple[int, ...] = (2, 3)) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


BIAS = np.full(3, 0.5, dtype=np.float32)
EMPTY = np.zeros((0, 4), dtype=np.float32)


def model(weight: np.ndarray, steps: int, bias: np.ndarray = BIAS, **extra: Any) -> dict[str, Any]:
    return {
        "fc.weight": weight,
        "fc.bias": bias,
        "bn.num_batches_tracked": np.array(steps, dtype=np.int64),
        "empty": EMPTY,
        **extra,
    }


@dataclass(frozen=True)
class History:
    commits: dict[str, ObjectId]  # label -> id
    models: dict[str, dict[str, Any]]  # label -> params committed

    def label(self, oid: ObjectId) -> str:
        return next(name for name, commit in self.commits.items() if commit == oid)


def build_history(repo: Repository) -> History:
    models = {
        "c0": model(tensor(0), 0),
        "c1": model(tensor(1), 10),
        "u1": model(tensor(2), 20),
        "u2": model(tensor(3), 20, bias=np.full(3, -1.0, dtype=np.float32), alias=tensor(1)),
        "m": model(tensor(4), 30),
    }
    models["c2"] = models["c1"]
    c: dict[str, ObjectId] = {}
    c["c0"] = repo.commit_params(models["c0"], "init", signer=ALICE)
    c["c1"] = repo.commit_params(models["c1"], "round 0", metadata={"round": 0}, signer=ALICE)
    repo.create_branch("bob", c["c1"])
    repo.create_branch("carol", c["c1"])
    c["u1"] = repo.commit_params(models["u1"], "bob's update", branch="bob", signer=BOB)
    c["u2"] = repo.commit_params(models["u2"], "carol's update", branch="carol", signer=CAROL)
    c["m"] = repo.commit_params(
        models["m"],
        "merge round 1",
        parents=[c["c1"], c["u1"], c["u2"]],
        metadata={"round": 1, "clients": ["bob", "carol"]},
        signer=ALICE,
    )
    c["c2"] = repo.commit_params(models["c2"], "roll back to round 0", signer=ALICE)
    return History(c, models)


def describe_objects(repo: Repository, history: History) -> dict[ObjectId, str]:
    """Every object in the store with a readable label: its kind and first use."""
    labels: dict[ObjectId, str] = {}
    for name, oid in history.commits.items():
        labels[oid] = f"commit-{name}"
    for name, oid in history.commits.items():
        snapshot = repo.get_commit(oid).snapshot
        labels.setdefault(snapshot, f"snapshot-{name}")
        for tensor_name, entry in repo.get_snapshot(snapshot).tensors.items():
            labels.setdefault(entry.blob, f"blob-{tensor_name}@{name}")
    unlabelled = set(repo.objects.iter_ids()) - set(labels)
    assert not unlabelled, unlabelled
    return labels


# The same history in memory has the same ids as on disk: enumerate its objects at
# collection time so that each object of the disk store gets its own test.
_MEMORY = Repository.memory(clock=fixed_clock)
_MEMORY_HISTORY = build_history(_MEMORY)
OBJECT_LABELS = describe_objects(_MEMORY, _MEMORY_HISTORY)
OBJECT_IDS = sorted(_MEMORY.objects.iter_ids())


@dataclass(frozen=True)
class Pristine:
    store: Path
    history: History
    labels: dict[ObjectId, str]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Pristine:
    root = tmp_path_factory.mktemp("pristine")
    repo = Repository.init(root, clock=fixed_clock)
    history = build_history(repo)
    described = describe_objects(repo, history)
    repo.close()  # no open connection may rewrite the database while tests copy it
    return Pristine(root / REPO_DIR, history, described)


@pytest.fixture
def store(pristine: Pristine, tmp_path: Path) -> Path:
    """A private copy of the pristine store directory, free to damage."""
    copy = tmp_path / "copy"
    shutil.copytree(pristine.store, copy)
    return copy


@pytest.fixture
def history(pristine: Pristine) -> History:
    return pristine.history


def open_repo(store: Path) -> Repository:
    return Repository.open(store, clock=fixed_clock)


def object_path(store: Path, oid: str) -> Path:
    return store / "objects" / oid[:2] / oid[2:]


def flip_byte(path: Path, position: int) -> None:
    data = bytearray(path.read_bytes())
    data[position] ^= 0xFF
    path.write_bytes(bytes(data))


def rewrite_commit(store: Path, oid: ObjectId, **changes: Any) -> bytes:
    """Replace a commit's file by a well-formed commit with some fields edited."""
    fields = json.loads(object_path(store, oid).read_bytes().split(b"\x00", 1)[1])
    fields.update(changes)
    payload = canonical_json(fields)
    object_path(store, oid).write_bytes(object_header("commit", len(payload)) + payload)
    return payload


def usages(repo: Repository, history: History, blob: ObjectId) -> set[tuple[str, ObjectId]]:
    """(tensor name, commit) pairs under which a blob appears."""
    found = set()
    for oid in history.commits.values():
        for name, entry in repo.get_snapshot(repo.get_commit(oid).snapshot).tensors.items():
            if entry.blob == blob:
                found.add((name, oid))
    return found


def blob_of(repo: Repository, history: History, label: str, name: str) -> ObjectId:
    snapshot = repo.get_commit(history.commits[label]).snapshot
    return repo.get_snapshot(snapshot).tensors[name].blob


def only_problem(report: VerifyReport) -> Problem:
    assert len(report.problems) == 1, [str(p) for p in report.problems]
    return report.problems[0]


# -- a clean repository -------------------------------------------------------------------


def test_disk_store_holds_exactly_the_objects_the_tests_are_parametrized_over(
    pristine: Pristine,
) -> None:
    with open_repo(pristine.store) as repo:  # other tests copy this store: close it after
        assert sorted(repo.objects.iter_ids()) == OBJECT_IDS
        kinds = [repo.objects.get(oid).kind for oid in OBJECT_IDS]
        merge = repo.get_commit(pristine.history.commits["m"])
    assert pristine.history.commits == _MEMORY_HISTORY.commits
    assert pristine.labels == OBJECT_LABELS
    assert (kinds.count("commit"), kinds.count("snapshot"), kinds.count("blob")) == (
        COMMITS,
        SNAPSHOTS,
        BLOBS,
    )
    commits = pristine.history.commits
    assert merge.parents == (commits["c1"], commits["u1"], commits["u2"])


def test_a_clean_repository_verifies(store: Path) -> None:
    repo = open_repo(store)
    report = verify(repo)
    assert report.ok, [str(p) for p in report.problems]
    assert report.problems == []
    assert report.head == repo.resolve("main")
    assert (report.commits, report.snapshots, report.blobs) == (COMMITS, SNAPSHOTS, BLOBS)
    assert report.signed == COMMITS
    assert report.unsigned == []
    every_payload = sum(len(repo.objects.get(oid).payload) for oid in repo.objects.iter_ids())
    assert report.bytes_checked == every_payload
    as_json = report.to_json()
    assert as_json["ok"] is True
    assert as_json["problems"] == []
    assert as_json["commits"] == COMMITS


def test_verify_checks_only_what_the_revision_reaches(store: Path, history: History) -> None:
    report = verify(open_repo(store), "bob")
    assert report.ok
    assert (report.commits, report.snapshots) == (3, 3)  # u1, c1, c0
    assert report.head == history.commits["u1"]


def test_trusting_every_author_verifies(store: Path) -> None:
    report = verify(open_repo(store), trust=ALL_KEYS)
    assert report.ok, [str(p) for p in report.problems]
    assert report.signed == COMMITS


def test_a_single_trusted_key_is_enough_for_its_own_commits(store: Path) -> None:
    report = verify(open_repo(store), "main~1^1", trust=TrustStore([ALICE.public_key]))
    assert report.ok
    assert report.commits == 2


def test_commits_by_authors_outside_the_trust_store_are_untrusted(
    store: Path, history: History
) -> None:
    report = verify(open_repo(store), trust=TrustStore([ALICE.public_key]))
    assert not report.ok
    assert {p.oid for p in report.problems} == {history.commits["u1"], history.commits["u2"]}
    for problem in report.problems:
        assert problem.kind == "untrusted"
        author = BOB if problem.oid == history.commits["u1"] else CAROL
        assert author.public_key.hex() in problem.detail
        assert problem.where == f"commit {short_id(problem.oid)}"


def test_trusting_only_another_key_makes_every_commit_untrusted(
    store: Path, history: History
) -> None:
    report = verify(open_repo(store), trust=TrustStore([MALLORY.public_key]))
    assert [p.kind for p in report.problems] == ["untrusted"] * COMMITS
    assert {p.oid for p in report.problems} == set(history.commits.values())
    assert report.signed == COMMITS  # the signatures themselves are fine


def test_an_unsigned_commit_is_listed_without_trust_and_a_problem_with_it(
    store: Path, history: History
) -> None:
    repo = open_repo(store)
    unsigned = repo.commit_params(model(tensor(5), 40), "no key at hand")
    report = verify(repo)
    assert report.ok
    assert report.unsigned == [unsigned]
    assert report.signed == COMMITS
    assert report.to_json()["unsigned"] == [unsigned]

    report = verify(repo, trust=ALL_KEYS)
    problem = only_problem(report)
    assert (problem.kind, problem.oid) == ("unsigned", unsigned)
    assert "not signed" in problem.detail
    assert short_id(unsigned) in str(problem)
    assert report.unsigned == [unsigned]


# -- one flipped byte anywhere ------------------------------------------------------------


@pytest.mark.parametrize("position", ["first", "last", "seeded"])
@pytest.mark.parametrize("oid", OBJECT_IDS, ids=[OBJECT_LABELS[oid] for oid in OBJECT_IDS])
def test_a_flipped_byte_is_reported_on_exactly_that_object(
    store: Path, history: History, oid: ObjectId, position: str
) -> None:
    path = object_path(store, oid)
    size = path.stat().st_size
    offset = {"first": 0, "last": size - 1, "seeded": random.Random(oid).randrange(size)}
    flip_byte(path, offset[position])
    repo = open_repo(store)
    kind = OBJECT_LABELS[oid].split("-")[0]

    report = verify(repo)

    problem = only_problem(report)
    assert problem.oid == oid
    assert problem.kind == "corrupt"
    assert short_id(oid) in str(problem)
    assert report.commits == COMMITS  # kept walking the whole history
    if kind == "commit":
        assert problem.where == f"commit {short_id(oid)}"
    elif kind == "snapshot":
        assert problem.where.startswith(f"snapshot {short_id(oid)} of commit ")
        users = [c for c in history.commits.values() if repo.get_commit(c).snapshot == oid]
        assert any(problem.where.endswith(f"commit {short_id(c)}") for c in users)
        assert oid in problem.detail
    else:
        assert any(
            problem.where == f"tensor {name!r} in snapshot "
            f"{short_id(repo.get_commit(commit).snapshot)} of commit {short_id(commit)}"
            for name, commit in usages(repo, history, oid)
        ), problem.where
        assert oid in problem.detail


def test_a_flipped_byte_in_a_blob_says_what_the_bytes_hash_to(
    store: Path, history: History
) -> None:
    repo = open_repo(store)
    blob = blob_of(repo, history, "u1", "fc.weight")
    path = object_path(store, blob)
    flip_byte(path, path.stat().st_size - 2)
    data = path.read_bytes()
    header, payload = data.split(b"\x00", 1)
    actual = hash_object("blob", payload)

    problem = only_problem(verify(repo))

    assert problem.where.startswith("tensor 'fc.weight' in snapshot ")
    assert problem.where.endswith(f"of commit {short_id(history.commits['u1'])}")
    assert blob in problem.detail
    assert actual in problem.detail
    assert header == b"blob 24"


def test_a_flipped_byte_in_the_head_commit_still_checks_the_rest(
    store: Path, history: History
) -> None:
    head = history.commits["c2"]
    flip_byte(object_path(store, head), 40)
    report = verify(open_repo(store), trust=ALL_KEYS)
    assert [p.oid for p in report.problems] == [head]
    assert (report.commits, report.snapshots, report.blobs) == (COMMITS, SNAPSHOTS, BLOBS)
    assert report.signed == COMMITS - 1


# -- commits edited on disk ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "new_value", "old_text", "new_text"),
    [
        ("message", "merge round 1 (nothing to see)", '"merge round 1"', '"merge round 1 (no'),
        ("metadata", {"clients": ["bob"], "round": 1}, '["bob", "carol"]', '{"clients": ["bob"]'),
        ("timestamp", NOW - 86_400, str(NOW), str(NOW - 86_400)),
    ],
)
def test_an_edited_commit_field_is_named_with_old_and_new_values(
    store: Path, history: History, field: str, new_value: Any, old_text: str, new_text: str
) -> None:
    merge = history.commits["m"]
    rewrite_commit(store, merge, **{field: new_value})

    problem = only_problem(verify(open_repo(store), trust=ALL_KEYS))

    assert (problem.kind, problem.oid) == ("corrupt", merge)
    assert short_id(merge) in str(problem)
    assert "edited fields" in problem.detail
    assert f"{field} (was " in problem.detail
    was, now = problem.detail.split(f"{field} (was ", 1)[1].split(", now ", 1)
    assert old_text in was
    assert new_text in now
    # only the edited field is named, not the (unchanged, now invalid) signature
    for other in ("author", "message", "metadata", "parents", "signature", "snapshot"):
        if other != field:
            assert f"{other} (was" not in problem.detail


def test_edited_parents_of_a_merge_are_named(store: Path, history: History) -> None:
    merge, c1, u1, u2 = (history.commits[name] for name in ("m", "c1", "u1", "u2"))
    rewrite_commit(store, merge, parents=[u2, c1, u1])
    problem = only_problem(verify(open_repo(store)))
    assert (problem.kind, problem.oid) == ("corrupt", merge)
    assert "edited fields: parents (was " in problem.detail
    was, now = problem.detail.split("parents (was ", 1)[1].split(", now ", 1)
    assert c1[:12] in was
    assert u2[:12] in now


def test_edited_parents_detail_shows_the_dropped_parent(store: Path, history: History) -> None:
    """A merge whose last parent was dropped names the dropped parent (a client's
    update quietly removed from a round's merge), not just a truncated list."""
    merge, c1, u1, u2 = (history.commits[name] for name in ("m", "c1", "u1", "u2"))
    rewrite_commit(store, merge, parents=[c1, u1])  # carol's update quietly dropped

    problem = only_problem(verify(open_repo(store)))

    assert (problem.kind, problem.oid) == ("corrupt", merge)
    assert "edited fields: parents (was " in problem.detail
    was, now = problem.detail.split("parents (was ", 1)[1].split(", now ", 1)
    assert was != now.removesuffix(")"), problem.detail
    assert u2[:8] in was, problem.detail
    now_ids, moves = now.split("; ", 1)
    assert u2[:8] not in now_ids
    assert f"removed ['{u2[:12]}']" in moves and "added none" in moves


def test_edited_snapshot_pointer_is_named(store: Path, history: History) -> None:
    repo = open_repo(store)
    other_snapshot = repo.get_commit(history.commits["c0"]).snapshot
    rewrite_commit(store, history.commits["c2"], snapshot=other_snapshot)
    problem = only_problem(verify(open_repo(store)))
    assert problem.oid == history.commits["c2"]
    assert "snapshot (was " in problem.detail


def test_a_reformatted_commit_is_reported_with_equal_fields(store: Path, history: History) -> None:
    oid = history.commits["u1"]
    path = object_path(store, oid)
    fields = json.loads(path.read_bytes().split(b"\x00", 1)[1])
    payload = json.dumps(fields, indent=1).encode()
    path.write_bytes(object_header("commit", len(payload)) + payload)
    problem = only_problem(verify(open_repo(store)))
    assert (problem.kind, problem.oid) == ("corrupt", oid)
    assert "formatting changed, fields equal" in problem.detail


def test_an_edited_commit_renamed_to_its_new_hash_breaks_the_childs_parent_link(
    store: Path, history: History
) -> None:
    victim = history.commits["u1"]
    payload = rewrite_commit(store, victim, message="bob's update (improved)")
    forged = hash_object("commit", payload)
    object_path(store, forged).parent.mkdir(exist_ok=True)
    object_path(store, victim).rename(object_path(store, forged))

    report = verify(open_repo(store), trust=ALL_KEYS)

    problem = only_problem(report)
    assert (problem.kind, problem.oid) == ("missing", victim)
    assert problem.where == f"commit {short_id(victim)}"
    assert "not in the store" in problem.detail
    assert report.commits == COMMITS
    assert (report.snapshots, report.blobs) == (SNAPSHOTS, BLOBS)  # u1's snapshot via the index


def test_a_signature_by_another_key_is_a_bad_signature(store: Path, history: History) -> None:
    repo = open_repo(store)
    original = repo.get_commit(history.commits["u1"])
    forged = dataclasses.replace(original, signature=MALLORY.sign(original.signing_bytes()).hex())
    assert forged.author == BOB.public_key.hex()
    forged_id = repo.objects.put("commit", forged.encode())
    repo.refs.set_ref("refs/heads/evil", forged_id, None)

    report = verify(repo, "evil")

    problem = only_problem(report)
    assert (problem.kind, problem.oid) == ("bad-signature", forged_id)
    assert BOB.public_key.hex() in problem.detail
    assert short_id(forged_id) in str(problem)
    assert report.signed == 2  # c1 and c0 are still fine


def test_a_commit_re_signed_by_an_outsider_is_untrusted(store: Path, history: History) -> None:
    repo = open_repo(store)
    original = repo.get_commit(history.commits["u1"])
    resigned = sign_commit(dataclasses.replace(original, message="mine now"), MALLORY)
    oid = repo.objects.put("commit", resigned.encode())
    repo.refs.set_ref("refs/heads/evil", oid, None)
    assert verify(repo, "evil").ok
    problem = only_problem(verify(repo, "evil", trust=ALL_KEYS))
    assert (problem.kind, problem.oid) == ("untrusted", oid)
    assert MALLORY.public_key.hex() in problem.detail


def test_a_snapshot_entry_that_does_not_fit_its_blob_is_malformed(
    store: Path, history: History
) -> None:
    repo = open_repo(store)
    c0 = repo.get_commit(history.commits["c0"])
    blob = repo.get_snapshot(c0.snapshot).tensors["fc.weight"].blob  # 24 bytes
    liar = Snapshot({"fc.weight": TensorEntry(blob, "float32", (3,))})
    snapshot = repo.objects.put("snapshot", liar.encode())
    oid = repo.write_commit(snapshot, message="wrong shape", signer=ALICE)
    repo.refs.set_ref("refs/heads/liar", oid, None)

    problem = only_problem(verify(repo, "liar"))

    assert (problem.kind, problem.oid) == ("malformed", blob)
    assert problem.where == (
        f"tensor 'fc.weight' in snapshot {short_id(snapshot)} of commit {short_id(oid)}"
    )
    assert blob in problem.detail
    assert "expected a blob of 12 bytes, found a blob of 24" in problem.detail


def test_a_commit_object_that_is_not_a_commit_is_malformed(store: Path, history: History) -> None:
    repo = open_repo(store)
    snapshot = repo.get_commit(history.commits["c0"]).snapshot
    repo.refs.set_ref("refs/heads/odd", snapshot, None)
    problem = only_problem(verify(repo, "odd"))
    assert (problem.kind, problem.oid) == ("malformed", snapshot)
    assert "found a snapshot" in problem.detail


# -- missing objects ----------------------------------------------------------------------


def test_a_deleted_blob_is_missing_and_named_by_tensor_and_commit(
    store: Path, history: History
) -> None:
    repo = open_repo(store)
    blob = blob_of(repo, history, "u2", "fc.bias")
    assert usages(repo, history, blob) == {("fc.bias", history.commits["u2"])}
    object_path(store, blob).unlink()

    report = verify(open_repo(store))

    problem = only_problem(report)
    assert (problem.kind, problem.oid) == ("missing", blob)
    assert "'fc.bias'" in problem.where
    assert problem.where.endswith(f"of commit {short_id(history.commits['u2'])}")
    assert short_id(blob) in str(problem)
    assert report.commits == COMMITS


def test_a_deleted_shared_blob_is_reported_once(store: Path, history: History) -> None:
    repo = open_repo(store)
    blob = blob_of(repo, history, "c0", "empty")
    assert len(usages(repo, history, blob)) == COMMITS
    object_path(store, blob).unlink()
    problem = only_problem(verify(open_repo(store)))
    assert (problem.kind, problem.oid) == ("missing", blob)
    assert "'empty'" in problem.where


def test_a_deleted_snapshot_is_missing(store: Path, history: History) -> None:
    repo = open_repo(store)
    snapshot = repo.get_commit(history.commits["m"]).snapshot
    object_path(store, snapshot).unlink()
    problem = only_problem(verify(open_repo(store)))
    assert (problem.kind, problem.oid) == ("missing", snapshot)
    assert (
        problem.where == f"snapshot {short_id(snapshot)} of commit {short_id(history.commits['m'])}"
    )


def test_a_deleted_commit_is_missing_and_its_ancestors_are_still_checked(
    store: Path, history: History
) -> None:
    u2 = history.commits["u2"]
    object_path(store, u2).unlink()
    report = verify(open_repo(store))
    problem = only_problem(report)
    assert (problem.kind, problem.oid) == ("missing", u2)
    assert (report.commits, report.snapshots, report.blobs) == (COMMITS, SNAPSHOTS, BLOBS)


# -- verify keeps going -------------------------------------------------------------------


def test_two_damaged_objects_in_different_commits_are_both_named(
    store: Path, history: History
) -> None:
    repo = open_repo(store)
    bob_weight = blob_of(repo, history, "u1", "fc.weight")
    root_weight = blob_of(repo, history, "c0", "fc.weight")
    flip_byte(object_path(store, bob_weight), -1)
    flip_byte(object_path(store, root_weight), -1)

    report = verify(open_repo(store))

    assert {p.oid for p in report.problems} == {bob_weight, root_weight}
    assert len(report.problems) == 2
    wheres = {p.oid: p.where for p in report.problems}
    assert wheres[bob_weight].endswith(f"commit {short_id(history.commits['u1'])}")
    assert wheres[root_weight].endswith(f"commit {short_id(history.commits['c0'])}")


def test_every_kind_of_damage_at_once_is_reported(store: Path, history: History) -> None:
    repo = open_repo(store)
    lost_blob = blob_of(repo, history, "m", "fc.weight")
    bad_snapshot = repo.get_commit(history.commits["u1"]).snapshot
    rewrite_commit(store, history.commits["c1"], message="history rewritten")
    object_path(store, lost_blob).unlink()
    flip_byte(object_path(store, bad_snapshot), 20)
    object_path(store, history.commits["c0"]).unlink()

    report = verify(open_repo(store), trust=ALL_KEYS)

    found = {(p.kind, p.oid) for p in report.problems}
    assert found == {
        ("corrupt", history.commits["c1"]),
        ("missing", lost_blob),
        ("corrupt", bad_snapshot),
        ("missing", history.commits["c0"]),
    }
    assert len(report.problems) == 4
    assert report.commits == COMMITS
    as_json = report.to_json()
    assert as_json["ok"] is False
    assert {(p["kind"], p["object"]) for p in as_json["problems"]} == found
    for problem in report.problems:
        assert str(problem).startswith(f"{problem.kind}: {problem.where}: ")
        assert short_id(problem.oid) in str(problem)


def test_truncated_object_says_what_was_found(store: Path, history: History) -> None:
    repo = open_repo(store)
    blob = blob_of(repo, history, "c1", "fc.weight")
    path = object_path(store, blob)
    path.write_bytes(path.read_bytes()[:-4])
    problem = only_problem(verify(open_repo(store)))
    assert (problem.kind, problem.oid) == ("corrupt", blob)
    assert blob in problem.detail
    assert "24 bytes but 20 follow" in problem.detail


def test_a_commit_whose_bytes_no_longer_parse_says_so(store: Path, history: History) -> None:
    oid = history.commits["u1"]
    path = object_path(store, oid)
    data = path.read_bytes()
    path.write_bytes(data[:-1] + b"]")  # same size, no longer JSON
    problem = only_problem(verify(open_repo(store)))
    assert (problem.kind, problem.oid) == ("corrupt", oid)
    assert oid in problem.detail
    assert "no longer parse" in problem.detail
    assert hash_object("commit", (data[:-1] + b"]").split(b"\x00", 1)[1]) in problem.detail


def test_verify_does_not_modify_the_repository(store: Path) -> None:
    before = {p: p.read_bytes() for p in (store / "objects").glob("*/*")}
    verify(open_repo(store), trust=ALL_KEYS)
    assert {p: p.read_bytes() for p in (store / "objects").glob("*/*")} == before


def test_commit_decoding_of_the_pristine_history_round_trips(pristine: Pristine) -> None:
    repo = open_repo(pristine.store)
    for oid in pristine.history.commits.values():
        commit = repo.get_commit(oid)
        assert isinstance(commit, Commit)
        assert hash_object("commit", commit.encode()) == oid
        assert repo.objects.indexed_commit(oid) == commit
