"""The simulation runner drives the real Coordinator and Participants, reproducibly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedvc.merge import fedavg, fisher
from fedvc.repo import Repository
from fedvc.round import ROUND_KEY, RoundConfig, RoundError
from fedvc.simulation.partition import dirichlet, iid
from fedvc.simulation.runner import (
    SIMULATED_EPOCH,
    Simulation,
    SimulationError,
    client_key,
    server_key,
)
from fedvc.simulation.workers import FleetTasks
from fedvc.simulation.workload import WorkloadSpec
from fedvc.trust import TrustStore
from fedvc.verify import verify

from .toy import MeanWorkload


def test_each_round_is_a_signed_octopus_merge_that_verifies(tmp_path: Path) -> None:
    workload = MeanWorkload()
    parts = dirichlet(workload.labels(), 4, alpha=0.5, seed=0)
    repo = Repository.init(tmp_path / "repo", bare=True)
    with Simulation(workload, parts, repo=repo, seed=3) as simulation:
        run = simulation.run("FedAvg", fedavg(), RoundConfig(train={"lr": 0.5}), rounds=2)
    assert [r.round for r in run.rounds] == [0, 1, 2]
    assert run.rounds[0].commit == simulation.initial == repo.resolve("main")
    assert repo.resolve("FedAvg") == run.rounds[-1].commit
    for record in run.rounds[1:]:
        commit = repo.get_commit(record.commit)
        assert commit.metadata[ROUND_KEY] == record.round
        assert commit.author == server_key(3).public_key.hex()
        assert len(commit.parents) == 1 + 4 and record.clients == [0, 1, 2, 3]
        for update in commit.parents[1:]:
            assert repo.get_commit(update).parents == (commit.parents[0],)
        assert commit.timestamp == SIMULATED_EPOCH + record.round
    keys = [server_key(3).public_key, *(client_key(3, k).public_key for k in range(4))]
    assert verify(repo, "FedAvg", TrustStore(keys)).ok
    assert not verify(repo, "FedAvg", TrustStore(keys[:-1])).ok  # a client key is needed
    repo.close()


def test_strategies_share_the_initial_commit_and_the_selection() -> None:
    workload = MeanWorkload()
    parts = iid(workload.labels(), 10, seed=0)
    config = RoundConfig(fraction=0.3, train={"epochs": 2})
    with Simulation(workload, parts, repo=Repository.memory()) as simulation:
        plain = simulation.run("fedavg", fedavg(), config, rounds=3)
        weighted = simulation.run("fisher", fisher(), config, rounds=3)
    assert plain.rounds[0].commit == weighted.rounds[0].commit
    for a, b in zip(plain.rounds[1:], weighted.rounds[1:], strict=True):
        assert len(a.clients) == 3 and a.clients == b.clients
    assert len({tuple(r.clients) for r in plain.rounds[1:]}) > 1  # a new draw each round


def test_same_seed_same_commits_and_the_model_learns() -> None:
    def commits(seed: int) -> list[str]:
        workload = MeanWorkload()
        parts = iid(workload.labels(), 5, seed=seed)
        with Simulation(workload, parts, repo=Repository.memory(), seed=seed) as simulation:
            run = simulation.run("a", fedavg(), RoundConfig(), rounds=3)
        assert run.rounds[-1].loss is not None and run.rounds[0].loss is not None
        assert run.rounds[-1].loss < run.rounds[0].loss
        return [r.commit for r in run.rounds]

    assert commits(0) == commits(0)
    assert commits(0)[1:] != commits(1)[1:]


def test_a_thousand_clients_build_only_the_selected_tasks() -> None:
    workload = MeanWorkload(examples=5000)
    parts = iid(workload.labels(), 1000, seed=0)
    with Simulation(workload, parts, repo=Repository.memory()) as simulation:
        assert workload.tasks_built == 0
        run = simulation.run("fedavg", fedavg(), RoundConfig(fraction=0.01), rounds=1)
    assert len(run.rounds[1].clients) == 10 and workload.tasks_built == 10
    assert len(simulation.trust) == 1000


def test_a_fresh_repository_and_a_spec_for_workers_are_required() -> None:
    workload = MeanWorkload()
    parts = iid(workload.labels(), 2, seed=0)
    repo = Repository.memory()
    Simulation(workload, parts, repo=repo).close()
    with pytest.raises(SimulationError, match="fresh"):
        Simulation(workload, parts, repo=repo)
    with pytest.raises(SimulationError, match="WorkloadSpec"):
        Simulation(workload, parts, repo=Repository.memory(), workers=2)


def test_fisher_rounds_carry_each_clients_fisher() -> None:
    workload = MeanWorkload()
    parts = iid(workload.labels(), 3, seed=0)
    repo = Repository.memory()
    with Simulation(workload, parts, repo=repo) as simulation:
        run = simulation.run("fisher", fisher(), RoundConfig(), rounds=1)
    merge = repo.get_commit(run.rounds[1].commit)
    for update in merge.parents[1:]:
        fisher_id = repo.get_commit(update).metadata["fisher"]
        assert repo.read_snapshot(fisher_id)["mean"][0] == pytest.approx(2000 / 3, abs=1)


@pytest.mark.slow
def test_one_and_two_workers_give_the_same_commits() -> None:
    """Training in worker processes changes nothing: the same ids, bit for bit (digits)."""
    pytest.importorskip("fedvc_client")
    spec = WorkloadSpec("digits", {"hidden": [16]})
    workload = spec.build()
    parts = dirichlet(workload.labels(), 4, alpha=0.5, seed=0)
    config = RoundConfig(train={"epochs": 1, "fisher_samples": 32, "fisher_draws": 1})

    def commits(workers: int) -> list[str]:
        repo = Repository.memory()
        with Simulation(workload, parts, repo=repo, workers=workers, spec=spec) as simulation:
            run = simulation.run("fisher", fisher(), config, rounds=2)
        return [r.commit for r in run.rounds]

    assert commits(1) == commits(2)


def test_iid_digits_accuracy_improves() -> None:
    pytest.importorskip("fedvc_client")
    workload = WorkloadSpec("digits", {"hidden": [16]}).build()
    parts = iid(workload.labels(), 4, seed=0)
    config = RoundConfig(train={"epochs": 2, "lr": 0.1})
    with Simulation(workload, parts, repo=Repository.memory()) as simulation:
        run = simulation.run("fedavg", fedavg(), config, rounds=2)
    accuracies = [r.accuracy for r in run.rounds]
    assert all(a is not None for a in accuracies)
    assert accuracies[-1] > accuracies[0] + 0.3, accuracies  # type: ignore[operator]
    assert np.isfinite(run.rounds[-1].loss or np.nan)


def test_a_round_larger_than_the_fleet_is_refused() -> None:
    workload = MeanWorkload()
    parts = iid(workload.labels(), 3, seed=0)
    with (
        Simulation(workload, parts, repo=Repository.memory()) as simulation,
        pytest.raises(RoundError, match="needs at least 5 clients but only 3 keys are trusted"),
    ):
        simulation.run("a", fedavg(), RoundConfig(min_clients=5, max_clients=5), rounds=1)


def test_fleet_tasks_train_what_the_simulation_trains() -> None:
    """``FleetTasks`` (how another engine runs the same fleet) gives each client's very update."""
    pytest.importorskip("fedvc_client")
    spec = WorkloadSpec("digits", {"hidden": [16]})
    workload = spec.build()
    parts = dirichlet(workload.labels(), 3, alpha=0.5, seed=0)
    train = {"epochs": 1, "lr": 0.1}
    repo = Repository.memory()
    with Simulation(workload, parts, repo=repo, seed=7) as simulation:
        run = simulation.run("fedavg", fedavg(), RoundConfig(train=train), rounds=1)
    tasks = FleetTasks(spec, tuple(parts), 7)
    clients = {client_key(7, k).public_key.hex(): k for k in range(3)}
    merge = repo.get_commit(run.rounds[-1].commit)
    for update in merge.parents[1:]:
        commit = repo.get_commit(update)
        trained = tasks(clients[commit.author]).train(
            repo.read_params(merge.parents[0]), {**train, "round": 1}
        )
        for name, value in repo.read_params(update).items():
            assert value.tobytes() == np.asarray(trained.params[name]).tobytes(), name
    with pytest.raises(ValueError, match="no 'round'"):
        tasks(0).train(repo.read_params(merge.parents[0]), train)
