"""An experiment file, run: the partition it asks for, then every strategy on it."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from fedvc.repo import Repository
from fedvc.simulation.config import PartitionConfig, parse_config
from fedvc.simulation.experiment import by_group, partition_clients, run_experiment
from fedvc.simulation.partition import PartitionError

from .toy import MeanWorkload


@pytest.mark.parametrize(
    "partition",
    [
        PartitionConfig("iid"),
        PartitionConfig("dirichlet", alpha=0.5),
        PartitionConfig("shards", classes_per_client=2),
        PartitionConfig("quantity_skew", alpha=1.0),
    ],
    ids=lambda p: p.kind,
)
def test_every_partition_kind_covers_the_data_once(partition: PartitionConfig) -> None:
    workload = MeanWorkload()
    parts = partition_clients(workload, partition, 8, seed=0)
    assert len(parts) == 8
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(len(workload.labels())))
    again = partition_clients(workload, partition, 8, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))


def test_natural_partitions_need_groups() -> None:
    assert [p.tolist() for p in by_group(np.array([1, 0, 1, 2]))] == [[1], [0, 2], [3]]
    with pytest.raises(PartitionError, match="needs a workload with groups"):
        partition_clients(MeanWorkload(), PartitionConfig("natural"), None, seed=0)


def test_stdlib_text_one_client_per_package() -> None:
    pytest.importorskip("fedvc_client")
    raw: dict[str, Any] = {
        "simulation": {"name": "chars", "rounds": 2, "workers": 1},
        "data": {
            "workload": "stdlib-chars",
            "params": {"packages": ["json", "email", "logging"], "bytes_per_package": 2000},
        },
        "partition": {"kind": "natural"},
        "train": {"epochs": 1, "lr": 0.1, "batch_size": 64},
        "strategy": [{"label": "FedAvg", "name": "fedavg"}],
    }
    result = run_experiment(parse_config(raw), Repository.memory())
    assert result.groups == ["json", "email", "logging"] and len(result.parts) == 3
    rounds = result.runs[0].rounds
    assert [r.clients for r in rounds[1:]] == [[0, 1, 2], [0, 1, 2]]
    losses = [r.loss for r in rounds]
    assert all(loss is not None for loss in losses)
    assert losses[2] < losses[1] < losses[0]  # type: ignore[operator]
    record = result.to_json()
    assert record["partition"]["groups"] == ["json", "email", "logging"]
    assert record["partition"]["kind"] == "natural" and len(record["partition"]["table"]) == 3
    raw["simulation"]["clients"] = 4
    with pytest.raises(PartitionError, match="3 groups, one client each, but clients = 4"):
        run_experiment(parse_config(raw), Repository.memory())


def test_regmean_runs_in_a_simulation_on_the_grams_clients_send() -> None:
    pytest.importorskip("fedvc_client")
    raw: dict[str, Any] = {
        "simulation": {"name": "rm", "rounds": 2, "clients": 4, "workers": 1},
        "data": {"workload": "digits", "params": {"hidden": [16]}},
        "partition": {"kind": "dirichlet", "alpha": 0.5},
        "train": {"epochs": 1, "lr": 0.05, "batch_size": 32},
        "strategy": [{"label": "RegMean", "name": "regmean"}],
    }
    repo = Repository.memory()
    result = run_experiment(parse_config(raw), repo)
    accuracy = [r.accuracy for r in result.runs[0].rounds]
    assert accuracy[-1] is not None and accuracy[-1] > accuracy[0]  # type: ignore[operator]
    merge = repo.get_commit(repo.resolve("regmean"))
    participants = merge.metadata["round"]["participants"]
    assert len(participants) == 4 and all("grams" in p for p in participants)
