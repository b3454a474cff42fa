"""A small federated history for the replay and ``fedvc show`` tests: a coordinator and
three clients whose noisy training sends a Fisher with every update."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fedvc.coordinator import Coordinator, CoordinatorConfig
from fedvc.merge.registry import make
from fedvc.participant import Participant, TrainResult
from fedvc.repo import Repository
from fedvc.round import RoundConfig
from fedvc.signing import SigningKey
from fedvc.tensors import ParamMap
from fedvc.trust import TrustStore

SERVER = SigningKey.from_seed(bytes([7]) * 32)
CLIENTS = [SigningKey.from_seed(bytes([20 + i]) * 32) for i in range(3)]


class Noisy:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def train(self, params: ParamMap, config: Mapping[str, Any]) -> TrainResult:
        new = {k: (v + self.rng.normal(size=v.shape)).astype(v.dtype) for k, v in params.items()}
        fisher = {
            k: np.abs(self.rng.normal(size=v.shape)).astype(v.dtype) for k, v in params.items()
        }
        return TrainResult(new, examples=int(self.rng.integers(5, 50)), fisher=fisher)


def federate(repo: Repository, strategy: str, rounds: int) -> None:
    coordinator = Coordinator(
        repo,
        make(strategy),  # type: ignore[arg-type]
        trust=TrustStore(k.public_key for k in CLIENTS),
        signer=SERVER,
        config=CoordinatorConfig(rounds, RoundConfig(min_clients=3)),
    )
    people = [Participant(coordinator, Noisy(i), key, repo) for i, key in enumerate(CLIENTS)]
    for _ in range(rounds):
        for person in people:
            person.step()
    assert coordinator.finished


def new_repo(path: Path) -> Repository:
    repo = Repository.init(path)
    repo.commit_params({"w": np.zeros((4, 5), np.float32), "b": np.ones(5, np.float32)}, "init")
    return repo
