"""The reference task of a real fleet: each client process trains its share of digits.

A deployed client runs ``digits_task(client=k, clients=n)``: the digits workload of the
simulations, restricted to client ``k``'s Dirichlet share. Every process computes the same
partition from the same seed, so ``n`` processes started with ``k = 0..n-1`` hold
disjoint shares without any coordination; the coordinator starts from
``digits_initial(seed)``. This is a thin wrapper over ``fedvc_client.workloads.digits``,
so a fleet and a simulation of it train exactly the same model on exactly the same data.
"""

from __future__ import annotations

from collections.abc import Sequence

from fedvc.participant import Task, TaskError
from fedvc.simulation.partition import dirichlet
from fedvc.tensors import ParamMap
from fedvc_client.workloads import digits


def digits_task(
    client: int = 0,
    clients: int = 3,
    alpha: float = 0.5,
    seed: int = 0,
    hidden: Sequence[int] = (64,),
) -> Task:
    """Client ``client``'s Dirichlet(``alpha``) share of the digits training set, of ``clients``."""
    if not 0 <= client < clients:
        raise TaskError(
            f"client must be an index from 0 to clients - 1 = {clients - 1}, got {client}"
        )
    workload = digits(hidden=hidden)
    parts = dirichlet(workload.labels(), clients, alpha, seed)
    return workload.client_task(parts[client])


def digits_initial(seed: int = 0, hidden: Sequence[int] = (64,)) -> ParamMap:
    """The initial digits model the coordinator commits before the first round."""
    return digits(hidden=hidden).initial_params(seed)
