"""``fedvc merge``, ``fedvc diff --interference / --aligned`` and ``fedvc barrier``."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
from regression import gram, least_squares

from fedvc import cli
from fedvc.align import apply_permutation, infer_spec, random_perms
from fedvc.repo import Repository
from fedvc.tensor_files import load_params, save_params

USER_MODULE = textwrap.dedent(
    """
    import numpy as np
    import torch

    def model():
        return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))

    def data():
        rng = np.random.default_rng(0)
        x = rng.standard_normal((64, 6)).astype(np.float32)
        return x, (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0).astype(np.int64)
    """
)


def mlp(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "0.weight": rng.standard_normal((16, 6)).astype(np.float32),
        "0.bias": rng.standard_normal(16).astype(np.float32),
        "2.weight": rng.standard_normal((3, 16)).astype(np.float32),
        "2.bias": rng.standard_normal(3).astype(np.float32),
    }


def forward(p: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    hidden = np.maximum(x @ p["0.weight"].T + p["0.bias"], 0)
    return hidden @ p["2.weight"].T + p["2.bias"]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "usertask.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def round_repo(workdir: Path) -> tuple[Repository, str, list[str]]:
    """A base on main and three client updates branched from it (not on any branch)."""
    repo = Repository.init(workdir, clock=lambda: 1_000)
    base = repo.commit_params(mlp(0), "base")
    updates = [
        repo.write_commit(
            repo.write_snapshot({k: v + i for k, v in mlp(0).items()}),
            parents=[base],
            message=f"client {i}",
        )
        for i in (1, 2, 3)
    ]
    return repo, base, updates


def test_merge_records_an_octopus_commit(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo, base, updates = round_repo(workdir)
    code, out, _ = run(
        capsys, "merge", "--base", "main", *updates, "--weights", "1,2,3", "-o", "m.safetensors"
    )
    assert code == 0 and "[main " in out and "interference score" in out
    merged = load_params(workdir / "m.safetensors")
    expected = (1 * 1 + 2 * 2 + 3 * 3) / 6
    np.testing.assert_allclose(merged["0.bias"], mlp(0)["0.bias"] + expected, rtol=1e-6)

    head = repo.resolve("HEAD")
    commit = repo.get_commit(head)
    assert commit.parents == (base, *updates)
    info = commit.metadata["merge"]
    assert info["strategy"] == {"name": "fedavg", "params": {}}
    assert [i["weight"] for i in info["inputs"]] == [1.0, 2.0, 3.0]
    assert info["interference"]["clients"] == 3
    np.testing.assert_array_equal(repo.read_params("HEAD")["0.bias"], merged["0.bias"])
    assert run(capsys, "verify")[0] == 0
    code, out, _ = run(capsys, "log", "--graph")
    assert out.splitlines()[1] == "|\\ \\ \\"


def test_merge_without_commit_and_from_files_outside_a_repository(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for i in (1, 2):
        save_params(mlp(i), workdir / f"c{i}.safetensors")
    code, out, _ = run(
        capsys, "merge", "--strategy", "median", "c1.safetensors", "c2.safetensors", "-o", "m.npz"
    )
    assert code == 0 and "median" in out
    merged = load_params(workdir / "m.npz")
    np.testing.assert_allclose(
        merged["2.bias"], (mlp(1)["2.bias"] + mlp(2)["2.bias"]) / 2, rtol=1e-6
    )

    repo, _, updates = round_repo(workdir / "r")
    before = repo.resolve("HEAD")
    code, _, _ = run(
        capsys,
        "--repo",
        str(workdir / "r"),
        "merge",
        "--base",
        "main",
        *updates,
        "-o",
        "x.safetensors",
        "--no-commit",
    )
    assert code == 0 and repo.resolve("HEAD") == before


def test_weight_alignment_without_a_base(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = mlp(5)
    spec = infer_spec(model)
    for seed in (1, 2, 3):
        save_params(
            apply_permutation(spec, random_perms(spec, model, seed=seed), model),
            workdir / f"p{seed}.safetensors",
        )
    inputs = ["p1.safetensors", "p2.safetensors", "p3.safetensors"]
    assert run(capsys, "merge", *inputs, "--align", "weight", "-o", "aligned.safetensors")[0] == 0
    assert run(capsys, "merge", *inputs, "-o", "naive.safetensors")[0] == 0
    x = np.random.default_rng(1).standard_normal((20, 6)).astype(np.float32)
    aligned, naive = (
        load_params(workdir / "aligned.safetensors"),
        load_params(workdir / "naive.safetensors"),
    )
    np.testing.assert_allclose(forward(aligned, x), forward(model, x), atol=1e-4)
    assert np.abs(forward(naive, x) - forward(model, x)).max() > 0.5


def test_activation_alignment_recovers_a_permutation(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = mlp(6)
    spec = infer_spec(model)
    save_params(model, workdir / "base.safetensors")
    save_params(
        apply_permutation(spec, random_perms(spec, model, seed=3), model), workdir / "p.safetensors"
    )
    code, _, err = run(
        capsys,
        "merge",
        "--base",
        "base.safetensors",
        "p.safetensors",
        "--align",
        "activation",
        "--model",
        "usertask:model",
        "--data",
        "usertask:data",
        "-o",
        "out.safetensors",
    )
    assert code == 0, err
    out = load_params(workdir / "out.safetensors")
    for name in model:
        np.testing.assert_allclose(out[name], model[name], rtol=1e-6)
    code, _, err = run(
        capsys, "merge", "p.safetensors", "--align", "activation", "-o", "o.safetensors"
    )
    assert code == 2 and "--model" in err


def test_fisher_strategy_takes_one_fisher_per_input(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = mlp(1), mlp(2)
    save_params(a, workdir / "a.safetensors")
    save_params(b, workdir / "b.safetensors")
    save_params({k: np.full_like(v, 1e6) for k, v in a.items()}, workdir / "fa.safetensors")
    save_params({k: np.full_like(v, 1e-6) for k, v in b.items()}, workdir / "fb.safetensors")
    code, _, err = run(
        capsys,
        "merge",
        "--strategy",
        "fisher",
        "a.safetensors",
        "b.safetensors",
        "--fisher",
        "fa.safetensors",
        "--fisher",
        "fb.safetensors",
        "-o",
        "f.safetensors",
    )
    assert code == 0, err
    np.testing.assert_allclose(
        load_params(workdir / "f.safetensors")["0.weight"], a["0.weight"], rtol=1e-5
    )
    code, _, err = run(
        capsys,
        "merge",
        "--strategy",
        "fisher",
        "a.safetensors",
        "b.safetensors",
        "--fisher",
        "fa.safetensors",
        "-o",
        "f.safetensors",
    )
    assert code == 2 and "one per INPUT" in err


def test_merge_errors(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    save_params(mlp(1), workdir / "a.safetensors")
    code, _, err = run(
        capsys, "merge", "--strategy", "nope", "a.safetensors", "-o", "o.safetensors"
    )
    assert code == 2 and "unknown strategy 'nope'" in err and "fedavg" in err
    code, _, err = run(capsys, "merge", "a.safetensors", "--weights", "1,2", "-o", "o.safetensors")
    assert code == 2 and "one per INPUT" in err
    code, _, err = run(
        capsys,
        "merge",
        "--strategy",
        "clip_by_norm",
        "--param",
        "max_norm=1",
        "a.safetensors",
        "-o",
        "o.safetensors",
    )
    assert code == 2 and "transforms updates" in err
    code, _, err = run(capsys, "merge", "missing~1", "-o", "o.safetensors")
    assert code == 2 and "missing~1" in err


def test_diff_interference_and_aligned(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = mlp(0)
    save_params(base, workdir / "base.safetensors")
    save_params({k: v + 1 for k, v in base.items()}, workdir / "up.safetensors")
    save_params({k: v - 1 for k, v in base.items()}, workdir / "down.safetensors")
    code, out, _ = run(
        capsys,
        "diff",
        "--interference",
        "--base",
        "base.safetensors",
        "up.safetensors",
        "down.safetensors",
    )
    assert code == 0 and "interference score 1 " in out and "mean cosine -1" in out
    code, out, _ = run(
        capsys,
        "diff",
        "--interference",
        "--base",
        "base.safetensors",
        "up.safetensors",
        "up.safetensors",
        "--json",
    )
    assert json.loads(out)["score"] == pytest.approx(0.0)
    code, _, err = run(capsys, "diff", "--interference", "up.safetensors", "down.safetensors")
    assert code == 2 and "--base" in err

    spec = infer_spec(base)
    save_params(
        apply_permutation(spec, random_perms(spec, base, seed=1), base),
        workdir / "perm.safetensors",
    )
    code, out, _ = run(
        capsys, "diff", "--aligned", "base.safetensors", "perm.safetensors", "--json"
    )
    figures = json.loads(out)
    assert figures["raw_l2"] > 1 and figures["aligned_l2"] == pytest.approx(0.0, abs=1e-5)


def test_barrier_prints_and_plots(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    save_params(mlp(1), workdir / "a.safetensors")
    save_params(mlp(2), workdir / "b.safetensors")
    code, out, err = run(
        capsys,
        "barrier",
        "a.safetensors",
        "b.safetensors",
        "--model",
        "usertask:model",
        "--data",
        "usertask:data",
        "--plot",
        "barrier.png",
        "--steps",
        "5",
    )
    assert code == 0, err
    assert "naive" in out and "aligned" in out
    assert (workdir / "barrier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_weight_aligned_merge_measures_interference_after_alignment(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = mlp(7)
    spec = infer_spec(base)
    save_params(base, workdir / "base.safetensors")
    inputs = []
    for seed in (1, 2):
        moved = {k: v + 0.01 * np.sign(v) for k, v in base.items()}  # the same direction
        save_params(
            apply_permutation(spec, random_perms(spec, moved, seed=seed), moved),
            workdir / f"u{seed}.safetensors",
        )
        inputs.append(f"u{seed}.safetensors")
    code, out, err = run(
        capsys,
        "merge",
        "--base",
        "base.safetensors",
        *inputs,
        "--align",
        "weight",
        "-o",
        "m.safetensors",
    )
    assert code == 0, err
    assert "chain(align(" in out and "fedavg()" in out
    mean_cosine = float(out.split("mean cosine ")[1].split()[0])
    assert mean_cosine > 0.99
    code, out, _ = run(
        capsys, "merge", "--base", "base.safetensors", *inputs, "-o", "n.safetensors"
    )
    assert float(out.split("mean cosine ")[1].split()[0]) < 0.5


def test_one_model_given_twice_is_a_usage_error(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, _, updates = round_repo(workdir)
    code, _, err = run(capsys, "merge", "--base", "main", updates[0], updates[0], "-o", "m.npz")
    assert code == 2 and "is the same model as" in err and "--weights" in err
    assert not (workdir / "m.npz").exists()


def test_a_data_loader_that_returns_no_pair_is_a_usage_error(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (workdir / "badloader.py").write_text("def data():\n    return [1, 2, 3]\n")
    save_params(mlp(1), workdir / "a.npz")
    save_params(mlp(2), workdir / "b.npz")
    code, _, err = run(
        capsys, "barrier", "a.npz", "b.npz", "--model", "usertask:model", "--data", "badloader:data"
    )
    assert code == 2 and "must return (inputs, targets), got list" in err


def least_squares_layer(x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    weight, bias = least_squares(x, y)
    return {"0.weight": weight, "0.bias": bias}


def regression_clients() -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(7)
    xs = [rng.standard_normal((40, 5)) + shift for shift in (0.0, 2.0)]
    truth = rng.standard_normal((5, 3))
    ys = [x @ truth + rng.standard_normal((40, 3)) for x in xs]
    return xs, ys


def test_regmean_takes_one_gram_file_per_input(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    xs, ys = regression_clients()
    for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
        save_params(least_squares_layer(x, y), workdir / f"m{i}.safetensors")
        save_params({"0.weight": gram(x)}, workdir / f"g{i}.safetensors")

    def merge(*grams: str) -> tuple[int, str, str]:
        gram_options = [arg for name in grams for arg in ("--gram", name)]
        argv = ["--strategy", "regmean", "--param", "alpha=1", "m0.safetensors", "m1.safetensors"]
        return run(capsys, "merge", *argv, *gram_options, "-o", "r.safetensors")

    code, _, err = merge("g0.safetensors", "g1.safetensors")
    assert code == 0, err
    pooled = least_squares_layer(np.vstack(xs), np.vstack(ys))
    merged = load_params(workdir / "r.safetensors")
    for name in pooled:
        np.testing.assert_allclose(merged[name], pooled[name], atol=1e-6)

    code, _, err = merge()
    assert code == 2 and "'m0.safetensors' carries no grams" in err and "--gram" in err
    code, _, err = merge("g0.safetensors")
    assert code == 2 and "--gram given 1 times for 2 inputs" in err
    save_params({"0.weight": np.eye(5)}, workdir / "small.safetensors")
    code, _, err = merge("g0.safetensors", "small.safetensors")
    assert code == 2 and "--gram small.safetensors does not fit INPUT 'm1.safetensors'" in err
    assert "6x6" in err


def test_merge_reads_the_fisher_and_grams_each_update_commit_attached(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Re-merging a round's updates by commit uses what each client sent with its update."""
    xs, ys = regression_clients()
    repo = Repository.init(workdir, clock=lambda: 1_000)
    base = repo.commit_params(least_squares_layer(xs[0][:6], ys[0][:6]), "base")
    updates = []
    for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
        layer = least_squares_layer(x, y)
        fisher = {k: np.full_like(v, 10.0 ** (6 - 12 * i)) for k, v in layer.items()}
        grams = repo.write_snapshot({"0.weight": gram(x)})
        metadata = {"grams": grams, "fisher": repo.write_snapshot(fisher)}
        updates.append(
            repo.write_commit(
                repo.write_snapshot(layer), parents=[base], message=f"c{i}", metadata=metadata
            )
        )
    code, _, err = run(
        capsys, "merge", "--strategy", "regmean", "--param", "alpha=1", *updates, "-o", "r.npz"
    )
    assert code == 0, err
    pooled = least_squares_layer(np.vstack(xs), np.vstack(ys))
    np.testing.assert_allclose(
        load_params(workdir / "r.npz")["0.weight"], pooled["0.weight"], atol=1e-6
    )

    code, _, err = run(capsys, "merge", "--strategy", "fisher", *updates, "-o", "f.npz")
    assert code == 0, err  # the first client's Fisher is 1e12 times the second's
    first = repo.read_params(updates[0])
    np.testing.assert_allclose(load_params(workdir / "f.npz")["0.weight"], first["0.weight"])

    plain = repo.commit_params(least_squares_layer(xs[1], ys[1]), "no grams")
    code, _, err = run(capsys, "merge", "--strategy", "regmean", updates[0], plain, "-o", "r.npz")
    assert code == 2 and f"INPUT {plain!r} carries no grams" in err


REGMEAN_RUN = """
[simulation]
name = "regmean"
rounds = 1
seed = 0
clients = 3
workers = 1

[data]
workload = "digits"
params = { hidden = [8] }

[partition]
kind = "dirichlet"
alpha = 0.5

[train]
epochs = 1

[[strategy]]
label = "RegMean"
name = "regmean"
"""


def test_a_rounds_regmean_merge_is_redone_from_its_commits(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The round's updates carry their Grams, so `fedvc merge` of them, with their example
    counts as weights, gives the round's merge bit for bit."""
    pytest.importorskip("fedvc_client")
    (workdir / "run.toml").write_text(REGMEAN_RUN)
    assert cli.main(["simulate", "run.toml", "--out", "out", "--no-plots"]) == 0
    with Repository.open(workdir / "out" / "repo") as repo:
        merge = repo.get_commit(repo.resolve("regmean"))
        base, *updates = merge.parents
        weights = [str(repo.get_commit(u).metadata["examples"]) for u in updates]
        expected = repo.read_params("regmean")
    capsys.readouterr()
    code, _, err = run(
        capsys,
        *("--repo", "out/repo", "merge", "--strategy", "regmean", "--base", base, *updates),
        *("--weights", ",".join(weights), "-o", "again.safetensors", "--no-commit"),
    )
    assert code == 0, err
    again = load_params(workdir / "again.safetensors")
    assert again.keys() == expected.keys()
    assert all(np.array_equal(again[k], expected[k]) for k in expected)
