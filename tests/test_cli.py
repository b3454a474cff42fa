"""The ``fedvc`` command end to end, in-process (``cli.main``) on real disk repositories."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedvc import cli
from fedvc.repo import Repository
from fedvc.tensor_files import load_params, save_params


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    model = {
        "fc1.weight": rng.standard_normal((16, 8)).astype(np.float32),
        "fc1.bias": np.zeros(16, np.float32),
        "fc2.weight": rng.standard_normal((4, 16)).astype(np.float32),
        "steps": np.array(3, np.int64),
    }
    save_params(model, tmp_path / "m1.safetensors")
    model["fc2.weight"] = -model["fc2.weight"]
    save_params(model, tmp_path / "m2.safetensors")
    return tmp_path


def test_commit_log_show_diff_checkout_verify(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "init")[0] == 0
    code, out, _ = run(capsys, "keygen", "--out", "me.key")
    key_id = out.split()[2]
    assert code == 0 and len(key_id) == 16 and (workdir / "me.key.pub").is_file()

    code, out, _ = run(
        capsys,
        "commit",
        "m1.safetensors",
        "-m",
        "epoch 1",
        "--key",
        "me.key",
        "--meta",
        "lr=0.01",
        "--meta",
        "dataset=digits-v1",
        "--meta",
        "round=3",
    )
    assert code == 0 and "signed by " + key_id in out
    assert run(capsys, "commit", "m2.safetensors", "-m", "epoch 2", "--key", "me.key")[0] == 0

    code, out, _ = run(capsys, "log", "--json")
    log = json.loads(out)
    assert [c["message"] for c in log] == ["epoch 2", "epoch 1"]
    assert log[1]["metadata"] == {"lr": 0.01, "dataset": "digits-v1", "round": 3}
    assert log[0]["parents"] == [log[1]["id"]] and log[0]["key_id"] == key_id
    assert log[0]["signature"] == "valid"

    code, out, _ = run(capsys, "show", "HEAD~1")
    assert code == 0 and "epoch 1" in out and "fc1.weight" in out and "16x8" in out
    assert 'dataset = "digits-v1"' in out and f"{key_id} (valid)" in out

    code, out, _ = run(capsys, "diff", "HEAD~1", "HEAD", "--json")
    result = json.loads(out)
    statuses = {t["name"]: t["status"] for t in result["tensors"]}
    assert statuses == {
        "fc1.bias": "unchanged",
        "fc1.weight": "unchanged",
        "fc2.weight": "changed",
        "steps": "unchanged",
    }
    changed = next(t for t in result["tensors"] if t["name"] == "fc2.weight")
    assert changed["cosine"] == pytest.approx(-1.0) and changed["relative"] == pytest.approx(2.0)

    code, out, _ = run(capsys, "diff", "HEAD~1", "m2.safetensors")
    assert code == 0 and "fc2.weight" in out and "1 changed" in out and "3 unchanged" in out

    assert run(capsys, "checkout", log[1]["id"][:8], "-o", "back.safetensors")[0] == 0
    original, restored = (
        load_params(workdir / "m1.safetensors"),
        load_params(workdir / "back.safetensors"),
    )
    assert original.keys() == restored.keys()
    assert all(
        np.array_equal(original[n], restored[n]) and original[n].dtype == restored[n].dtype
        for n in original
    )

    code, out, _ = run(capsys, "verify", "--trust", "me.key.pub")
    assert code == 0 and "2 signed" in out
    assert run(capsys, "verify", "--trust", key_id)[0] == 0


def test_verify_fails_on_untrusted_key_and_on_corruption(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(capsys, "init")
    run(capsys, "keygen", "--out", "me.key")
    run(capsys, "keygen", "--out", "other.key")
    run(capsys, "commit", "m1.safetensors", "-m", "one", "--key", "me.key")
    code, out, _ = run(capsys, "verify", "--trust", "other.key.pub")
    assert code == 1 and "untrusted" in out and "FAILED" in out

    repo = Repository.open(workdir)
    blob = (
        repo.get_snapshot(repo.get_commit(repo.resolve("HEAD")).snapshot).tensors["fc1.weight"].blob
    )
    path = workdir / ".fedvc" / "objects" / blob[:2] / blob[2:]
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    code, out, _ = run(capsys, "verify", "--json")
    report = json.loads(out)
    assert code == 1 and not report["ok"]
    assert [(p["kind"], p["object"]) for p in report["problems"]] == [("corrupt", blob)]
    assert "fc1.weight" in report["problems"][0]["where"]


def test_branches_tags_and_graph_of_a_merge(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = Repository.init(workdir, clock=lambda: 1_000)
    base = repo.commit_params(load_params(workdir / "m1.safetensors"), "base")
    updates = [
        repo.write_commit(
            repo.write_snapshot({"w": np.full(3, i, np.float32)}),
            parents=[base],
            message=f"client {i}",
            timestamp=2_000 + i,
        )
        for i in range(3)
    ]
    merge = repo.write_commit(
        repo.write_snapshot({"w": np.ones(3, np.float32)}),
        parents=[base, *updates],
        message="round 1",
        timestamp=3_000,
    )
    repo.refs.set_ref("refs/heads/main", merge, base)

    assert run(capsys, "tag", "r1")[0] == 0
    assert run(capsys, "branch", "side", "HEAD^2")[0] == 0
    code, out, _ = run(capsys, "branch")
    assert "* main" in out and "side" in out
    code, out, _ = run(capsys, "log", "--graph")
    lines = out.splitlines()
    assert lines[0].startswith("*  ") and "(HEAD -> main, tag: r1) round 1" in lines[0]
    assert lines[1] == "|\\ \\ \\"
    assert lines[2].startswith("| | | *") and "client 2" in lines[2]
    assert lines[-1].startswith("*  ") and "base" in lines[-1]
    code, out, _ = run(capsys, "log", "side", "--json")
    assert json.loads(out)[0]["message"] == "client 0"
    code, out, err = run(capsys, "tag", "r1", "HEAD~1")
    assert code == 2 and "refs/tags/r1" in err


def test_errors_are_clear_and_exit_2(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "log")
    assert code == 2 and "fedvc init" in err
    run(capsys, "init")
    code, _, err = run(capsys, "log")
    assert code == 2 and "no commits yet" in err
    code, _, err = run(capsys, "commit", "missing.safetensors")
    assert code == 2 and "missing.safetensors" in err
    (workdir / "model.pt").write_bytes(b"\x80\x04garbage")
    code, _, err = run(capsys, "commit", "model.pt")
    assert code == 2 and ".pt" in err
    code, _, err = run(capsys, "commit", "m1.safetensors", "--meta", "novalue")
    assert code == 2 and "KEY=VALUE" in err
    run(capsys, "commit", "m1.safetensors")
    code, _, err = run(capsys, "show", "nosuchbranch")
    assert code == 2 and "unknown revision" in err and "main" in err
    code, _, err = run(capsys, "verify", "--trust", "not-a-key")
    assert code == 2 and "--trust" in err


def test_repo_option_and_discovery(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    run(capsys, "init", "project")
    run(capsys, "--repo", "project", "commit", "m1.safetensors", "-m", "from outside")
    nested = workdir / "project" / "a" / "b"
    nested.mkdir(parents=True)
    monkeypatch.chdir(nested)
    code, out, _ = run(capsys, "log")
    assert code == 0 and "from outside" in out


def test_console_script_runs(workdir: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fedvc.cli", "init", "x"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0 and "Initialized" in result.stdout
    assert (workdir / "x" / ".fedvc" / "fedvc.db").is_file()


def test_graph_moves_later_columns_left_when_a_middle_branch_ends() -> None:
    from fedvc.objects import Commit
    from fedvc.render import graph_lines

    def oid(c: str) -> str:
        return c * 64

    base = Commit(snapshot=oid("0"), timestamp=1)  # type: ignore[arg-type]
    updates = {c: Commit(snapshot=oid("0"), parents=(oid("b"),), timestamp=2) for c in "cde"}  # type: ignore[arg-type]
    merge = Commit(snapshot=oid("0"), parents=(oid("b"), oid("c"), oid("d"), oid("e")), timestamp=3)  # type: ignore[arg-type]
    entries = [
        (oid("f"), merge),
        (oid("c"), updates["c"]),
        (oid("d"), updates["d"]),
        (oid("e"), updates["e"]),
        (oid("b"), base),
    ]
    lines = [line.split("  ")[0] for line in graph_lines(entries, {})]  # type: ignore[arg-type]
    assert lines == ["*", "|\\ \\ \\", "| * | |", "|/ / /", "| * |", "|/ /", "| *", "|/", "*"]
