"""Experiment files are checked completely, with errors that say what to write."""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import Any

import pytest

from fedvc.simulation.config import ConfigError, branch_name, load_config, parse_config

ROOT = Path(__file__).resolve().parents[2]

GOOD: dict[str, Any] = {
    "simulation": {"name": "t", "rounds": 2, "seed": 1, "clients": 4},
    "data": {"workload": "digits", "params": {"hidden": [16]}},
    "partition": {"kind": "dirichlet", "alpha": 0.5},
    "round": {"min_clients": 2, "fraction": 0.5},
    "train": {"epochs": 1, "lr": 0.1},
    "strategy": [
        {"label": "FedAvg", "name": "fedavg"},
        {"label": "FedProx", "name": "fedavg", "train": {"mu": 0.01}},
        {"label": "Aligned Fisher", "name": "fisher", "align": "weight"},
    ],
}


def changed(path: str, value: Any) -> dict[str, Any]:
    """GOOD with one key set (``a.b``; ``strategy.0.name``); value None deletes it."""
    data = copy.deepcopy(GOOD)
    *parents, last = path.split(".")
    node: Any = data
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if value is None:
        del node[last]
    else:
        node[last] = value
    return data


def test_a_good_config_is_read_into_typed_values() -> None:
    config = parse_config(GOOD)
    assert (config.name, config.rounds, config.seed, config.clients, config.workers) == (
        "t",
        2,
        1,
        4,
        2,
    )
    assert config.workload.target == "fedvc_client.workloads:digits"
    assert config.partition.alpha == 0.5 and config.partition.min_size is None
    assert [s.branch for s in config.strategies] == ["fedavg", "fedprox", "aligned-fisher"]
    prox = config.round_config(config.strategies[1])
    assert dict(prox.train) == {"epochs": 1, "lr": 0.1, "mu": 0.01}
    assert prox.target(10) == 5 and prox.min_clients == 2
    assert config.strategies[2].build().spec.name == "chain"


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("simulation.rounds", "5", "rounds: expected an integer ≥ 1, got '5' (a string)"),
        ("simulation.rounds", 0, "rounds: expected an integer ≥ 1, got 0; write e.g. rounds"),
        ("simulation.workers", True, "workers: expected an integer ≥ 1, got True (a boolean)"),
        ("simulation.clients", None, "clients: missing; a dirichlet partition needs"),
        ("simulation.epochs", 3, "[simulation]: unknown key(s) epochs; the keys allowed"),
        ("partition.alpha", None, "[partition] alpha: missing; expected a number > 0"),
        ("partition.alpha", -1, "alpha: expected a number > 0, got -1"),
        ("partition.kind", "pathological", "kind: expected one of iid, dirichlet, shards"),
        ("train.lr", "fast", "[train] lr: expected a number > 0, got 'fast'"),
        ("train.epoch", 1, "unknown key(s) epoch; the keys allowed here are epochs"),
        ("round.fraction", 2.0, "fraction: expected a number in (0, 1]"),
        ("round.max_clients", 1, "min ≤ max"),
        ("strategy.0.name", "fedsgd", "unknown strategy 'fedsgd'; available:"),
        ("strategy.0.params", {"beta": 1}, "strategy 'fedavg': bad parameters"),
        ("strategy.1.train", {"mu": -1}, "#2 train mu: expected a number ≥ 0"),
        ("strategy.1.label", "fedavg!", "'fedavg!' and 'FedAvg' both become branch 'fedavg'"),
        ("strategy.2.align", "activation", "align: expected one of none, weight"),
        ("strategy.1.label", "Main", "becomes branch 'main', which holds the initial model"),
        ("strategy", [], "no [[strategy]]"),
        ("extra", {}, "top level: unknown key(s) extra"),
    ],
)
def test_bad_configs_name_the_key_and_what_to_write(path: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(changed(path, value), "exp.toml")
    assert str(caught.value).startswith("exp.toml: ")
    assert message in str(caught.value)


def test_partition_kinds_take_only_their_own_keys() -> None:
    shards = parse_config(changed("partition", {"kind": "shards", "classes_per_client": 2}))
    assert shards.partition.classes_per_client == 2
    with pytest.raises(
        ConfigError, match=r"unknown key\(s\) alpha; the keys allowed here are kind"
    ):
        parse_config(changed("partition", {"kind": "iid", "alpha": 0.5}))
    natural = changed("partition", {"kind": "natural"})
    del natural["simulation"]["clients"]
    assert parse_config(natural).clients is None


def test_files_are_read_as_toml(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[simulation\nname = 1\n")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="cannot read experiment file"):
        load_config(tmp_path / "missing.toml")


@pytest.mark.parametrize(
    "path", sorted((ROOT / "simulations").glob("*.toml")), ids=lambda p: p.name
)
def test_the_shipped_experiments_are_valid(path: Path) -> None:
    config = load_config(path)
    assert config.name == path.stem and config.strategies


def test_branch_names() -> None:
    assert branch_name("Matched averaging (alpha=0.1)") == "matched-averaging-alpha-0-1"
    assert branch_name("FedProx μ=0.01") == "fedprox-0-01"


def test_the_readme_example_is_a_valid_experiment() -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = [b for b in readme.split("```toml\n")[1:] if b.startswith("[simulation]")]
    assert len(blocks) == 1
    config = parse_config(tomllib.loads(blocks[0].split("```")[0]), "README.md")
    assert config.strategies[0].branch == "fedprox" and config.train["epochs"] == 5


@pytest.mark.parametrize(
    "factory, words",
    [
        ("digitz", "or one of digits, stdlib-chars"),
        ("no_such_package.module:build", "cannot import module 'no_such_package.module'"),
        ("fedvc.simulation.workload:nothing", "has no attribute 'nothing'"),
    ],
)
def test_a_workload_that_cannot_be_found_is_named(factory: str, words: str) -> None:
    from fedvc.simulation.workload import WorkloadError, WorkloadSpec

    with pytest.raises(WorkloadError) as caught:
        WorkloadSpec(factory).build()
    assert words in str(caught.value) and repr(factory) in str(caught.value)
