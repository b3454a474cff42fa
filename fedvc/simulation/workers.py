"""The training side of a simulation: what runs in the worker processes.

Workers fork from a ``forkserver`` that imported the workload's module once (``spawn``
where there is no forkserver; never a plain ``fork`` of this process: a forked copy of a
process that has started torch's or BLAS's threads can deadlock), and build the workload
once, from its ``WorkloadSpec``, in the pool's initializer. A job is a few clients to train from one
base; what comes back is each client's ``TrainResult`` and the seconds spent in the
workload's own code, which the benchmarks subtract to find the framework's overhead.
Nothing here touches a repository: commits and signatures stay in the main process.

``FleetTasks`` hands the same clients, with the same seeds, to another framework's
workers (Flower's Ray actors, through ``fedvc.compat.flower_client.task_client_app``), so
that a comparison trains exactly what a ``Simulation`` trains.
"""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedvc.participant import Task, TrainResult
from fedvc.simulation.workload import Workload, WorkloadSpec
from fedvc.tensors import ParamMap


def training_seed(seed: int, round_number: int, client: int) -> int:
    """The seed of one client's training in one round: independent streams per pair."""
    return int(np.random.SeedSequence([seed, round_number, client]).generate_state(1)[0])


@dataclass(frozen=True)
class TrainJob:
    """Clients to train from one base: what a worker process is sent."""

    clients: tuple[int, ...]
    indices: tuple[np.ndarray, ...]
    configs: tuple[Mapping[str, Any], ...]
    base: Mapping[str, np.ndarray]


@dataclass(frozen=True)
class Trained:
    """One client's training: its result, and the seconds spent in the workload's code."""

    client: int
    result: TrainResult
    seconds: float


def train_clients(workload: Workload, job: TrainJob) -> list[Trained]:
    """Build each client's task and train it from the job's base."""
    done = []
    for client, indices, config in zip(job.clients, job.indices, job.configs, strict=True):
        started = time.perf_counter()
        result = workload.client_task(indices).train(job.base, config)
        done.append(Trained(client, result, time.perf_counter() - started))
    return done


_worker_workload: Workload | None = None


def _start_worker(spec: WorkloadSpec) -> None:
    global _worker_workload
    _worker_workload = spec.build()


def ready() -> None:
    """Nothing: submitting it makes the pool start a worker now rather than later."""


def train_in_worker(job: TrainJob) -> list[Trained]:
    assert _worker_workload is not None, "the pool's initializer builds the workload"
    return train_clients(_worker_workload, job)


def start_pool(spec: WorkloadSpec, workers: int) -> concurrent.futures.ProcessPoolExecutor:
    """A pool of ``workers`` processes, each holding the workload ``spec`` builds.

    They fork from a fresh server process that imported the workload's module (torch, for
    the bundled ones) once: no worker pays that import again, and the server itself never
    ran a thread, so forking it is safe where forking this process would not be.
    """
    context: multiprocessing.context.BaseContext
    if "forkserver" not in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("spawn")
    else:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([spec.target.partition(":")[0]])
    return concurrent.futures.ProcessPoolExecutor(
        max_workers=workers,
        mp_context=context,
        initializer=_start_worker,
        initargs=(spec,),
    )


_built: dict[str, Workload] = {}


def built_workload(spec: WorkloadSpec) -> Workload:
    """The workload ``spec`` names, built once per process (a data set is loaded once)."""
    key = json.dumps(spec.to_json(), sort_keys=True)
    if key not in _built:
        _built[key] = spec.build()
    return _built[key]


class _SeededTask:
    """A client's task, trained with the seed ``Simulation`` gives it in that round."""

    def __init__(self, task: Task, seed: int, client: int) -> None:
        self.task, self.seed, self.client = task, seed, client

    def train(self, params: ParamMap, config: Mapping[str, Any]) -> TrainResult:
        if "round" not in config:
            raise ValueError(
                f"client {self.client}'s training seed depends on the round, but the config "
                f"{dict(config)} has no 'round'"
            )
        seed = training_seed(self.seed, int(config["round"]), self.client)
        return self.task.train(params, {**config, "seed": seed})


@dataclass(frozen=True)
class FleetTasks:
    """A simulated fleet as ``client number -> Task``, cheap to pickle, usable anywhere.

    Client ``k`` trains on ``parts[k]`` of the workload ``spec`` builds, seeded by
    ``(seed, round, k)`` exactly as in a ``Simulation`` with the same seed: given the same
    base weights, it returns bit for bit the update the simulation's client would. Only
    names and indices are held, so another engine can ship it to its workers with every
    message; each process builds the workload once (``built_workload``).
    """

    spec: WorkloadSpec
    parts: tuple[np.ndarray, ...]
    seed: int

    def __call__(self, client: int) -> Task:
        if not 0 <= client < len(self.parts):
            raise ValueError(f"client {client} is not in this fleet of {len(self.parts)}")
        task = built_workload(self.spec).client_task(self.parts[client])
        return _SeededTask(task, self.seed, client)
