"""The training side of a simulation: what runs in the worker processes.

Workers are started with ``spawn`` (never ``fork``: a forked copy of a process that has
started torch's or BLAS's threads can deadlock) and build the workload once, from its
``WorkloadSpec``, in the pool's initializer. A job is a few clients to train from one
base; what comes back is each client's ``TrainResult`` and the seconds spent in the
workload's own code, which the benchmarks subtract to find the framework's overhead.
Nothing here touches a repository: commits and signatures stay in the main process.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedvc.participant import TrainResult
from fedvc.simulation.workload import Workload, WorkloadSpec


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
    """A pool of ``workers`` spawned processes, each holding the workload ``spec`` builds."""
    return concurrent.futures.ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_start_worker,
        initargs=(spec,),
    )
