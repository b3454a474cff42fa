"""What a simulation trains, behind one protocol the core can drive without torch.

A ``Workload`` is a data set split into train and test, a model, and the training and
evaluation of that model. The simulation runner needs only what is below: the train labels
(to partition by label), an optional natural grouping (one client per source), an initial
model, a ``Task`` for any subset of the train examples, and a central evaluation. The
torch implementations live in ``fedvc_client.workloads``.

Workloads are named as ``module:factory`` plus keyword parameters (``WorkloadSpec``)
rather than passed around as objects, because the worker processes that train clients in
parallel must rebuild the very same workload: a name and a few numbers cross a process
boundary cheaply and reproducibly, a model and a data set would have to be pickled.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from fedvc.errors import FedvcError
from fedvc.participant import Task
from fedvc.tensors import ParamMap
from fedvc.user_code import UserCodeError, import_object

ALIASES: Mapping[str, str] = {
    "digits": "fedvc_client.workloads:digits",
    "stdlib-chars": "fedvc_client.workloads:stdlib_chars",
}
"""Short names a config may use for the bundled workloads (they need ``fedvc-client``)."""

REQUIRED_METHODS = ("labels", "groups", "initial_params", "client_task", "evaluate")


class WorkloadError(FedvcError):
    """A workload cannot be found, built, or does not provide what a simulation needs."""


@runtime_checkable
class Workload(Protocol):
    """A data set, a model and how to train and evaluate it.

    ``labels()`` holds one label per train example (label-skew partitioners split by it);
    ``groups()`` one natural source id per train example (e.g. the package a text came
    from), or None when the data has no natural split. ``client_task(indices)`` returns a
    ``fedvc.participant.Task`` training on those train examples; its ``train(params,
    config)`` reads ``epochs``, ``lr``, ``batch_size``, ``mu`` (FedProx), ``fisher``,
    ``round`` and ``seed`` from the config. ``evaluate(params)`` reports at least
    ``accuracy`` and ``loss`` on the held-out test set.

    A workload may also define ``group_names() -> list[str]``, the name of each group id.
    """

    def labels(self) -> np.ndarray: ...

    def groups(self) -> np.ndarray | None: ...

    def initial_params(self, seed: int) -> ParamMap: ...

    def client_task(self, indices: np.ndarray) -> Task: ...

    def evaluate(self, params: ParamMap) -> dict[str, float]: ...


def group_names(workload: Workload) -> list[str] | None:
    """The workload's names for its groups, when it has groups and names them."""
    names = getattr(workload, "group_names", None)
    if workload.groups() is None or not callable(names):
        return None
    return [str(name) for name in names()]


@dataclass(frozen=True)
class WorkloadSpec:
    """A workload by name: ``factory`` is ``module:function`` (or an alias from ``ALIASES``),
    ``params`` its keyword arguments. Equal specs build equal workloads in any process."""

    factory: str
    params: Mapping[str, Any] = field(default_factory=dict)

    @property
    def target(self) -> str:
        """The ``module:function`` the factory name stands for (aliases resolved)."""
        return ALIASES.get(self.factory, self.factory)

    def to_json(self) -> dict[str, Any]:
        return {"factory": self.target, "params": dict(self.params)}

    def build(self) -> Workload:
        """Import the factory, call it with ``params``, and check what it returned."""
        try:
            factory = import_object(self.target, f"workload {self.factory!r}")
        except UserCodeError as exc:
            hint = (
                " (install the client: pip install -e ./client)"
                if "fedvc_client" in str(exc)
                else ""
            )
            if ":" not in self.target:
                hint = f" (or one of {', '.join(sorted(ALIASES))})"
            raise WorkloadError(f"{exc}{hint}") from exc
        try:
            workload = factory(**dict(self.params))
        except (TypeError, ValueError) as exc:
            raise WorkloadError(
                f"workload {self.factory!r}: bad parameters {dict(self.params)}: {exc}"
            ) from exc
        return check_workload(workload, self.factory)


def check_workload(workload: object, name: str = "workload") -> Workload:
    """``workload`` itself if it has every method of ``Workload``, else a clear error."""
    missing = [m for m in REQUIRED_METHODS if not callable(getattr(workload, m, None))]
    if missing:
        raise WorkloadError(
            f"{name} built a {type(workload).__name__}, which lacks {', '.join(missing)}: a "
            "workload needs labels(), groups(), initial_params(seed), client_task(indices) "
            "and evaluate(params) (see fedvc.simulation.workload.Workload)"
        )
    assert isinstance(workload, Workload)
    return workload
