"""Seeded partitions of a labelled data set among simulated clients.

Every partitioner takes the data set's label array and returns one sorted ``int64`` index
array per client. The arrays are disjoint and together cover every index exactly once, so
no example is lost or duplicated, and the same ``seed`` always gives the same split (each
call draws from its own ``numpy.random.default_rng(seed)``, never the global state).

- ``iid``: a uniformly random split into near-equal parts, the baseline every non-IID
  result is compared with.
- ``dirichlet``: label skew. For every class, the share each client receives is drawn from
  a symmetric Dirichlet(alpha); small alpha gives clients dominated by a few classes, large alpha
  approaches ``iid``. Draws that leave a client with fewer than ``min_size`` examples are
  redrawn, a bounded number of times.
- ``shards``: pathological label skew, where every client holds exactly
  ``classes_per_client`` classes.
- ``quantity_skew``: every client sees the same label distribution, but the number of
  examples per client follows a Dirichlet(alpha) draw.

``partition_table`` counts each client's examples per class, to print or check a split;
``stratified_holdout`` sets a test set aside with every class in proportion.

Only numpy is used, so partitions can be made wherever fedvc is installed.

References:
    McMahan, Moore, Ramage, Hampson, Agüera y Arcas, "Communication-Efficient Learning of
    Deep Networks from Decentralized Data", AISTATS 2017 (the pathological shard split).
    Hsu, Qi, Brown, "Measuring the Effects of Non-Identical Data Distribution for Federated
    Visual Classification", 2019 (Dirichlet label skew).
    Li, Diao, Chen, He, "Federated Learning on Non-IID Data Silos: An Experimental Study",
    ICDE 2022 (quantity skew by a Dirichlet draw of client sizes).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from fedvc.errors import FedvcError

DEFAULT_MAX_ATTEMPTS = 1000
"""How many Dirichlet draws ``dirichlet`` tries before it reports that ``min_size`` is out
of reach: with a reachable ``min_size`` a good draw comes within a handful."""


class PartitionError(FedvcError, ValueError):
    """A partition cannot be made with these arguments (too many clients, bad alpha...)."""


def _check_labels(labels: np.ndarray) -> np.ndarray:
    array = np.asarray(labels)
    if array.ndim != 1:
        raise PartitionError(
            f"labels must be a 1-D array with one label per example, got shape {list(array.shape)}"
        )
    if array.size == 0:
        raise PartitionError("labels is empty: there is nothing to partition")
    return array


def _check_clients(clients: int, available: int, what: str = "examples") -> None:
    if isinstance(clients, bool) or not isinstance(clients, int | np.integer) or clients < 1:
        raise PartitionError(f"clients must be a positive integer, got {clients!r}")
    if clients > available:
        raise PartitionError(
            f"cannot give {clients} clients at least one example each from {available} "
            f"{what}; use at most {available} clients"
        )


def _check_alpha(alpha: float) -> float:
    try:
        value = float(alpha)
    except (TypeError, ValueError):
        # Report a bad alpha as every other bad argument is reported, so callers that
        # catch PartitionError (the CLI, sweeps over settings) see it too.
        raise PartitionError(
            f"alpha, the Dirichlet concentration, must be a finite number > 0, got {alpha!r} "
            f"of type {type(alpha).__name__}; pass a number such as 0.1 or 100"
        ) from None
    if not (math.isfinite(value) and value > 0):
        raise PartitionError(
            f"alpha, the Dirichlet concentration, must be a finite number > 0, got {alpha!r} "
            "(small values such as 0.1 give strong skew, large ones such as 100 nearly none)"
        )
    return value


def _check_min_size(min_size: int, clients: int, total: int) -> None:
    if isinstance(min_size, bool) or not isinstance(min_size, int | np.integer) or min_size < 0:
        raise PartitionError(f"min_size must be an integer ≥ 0, got {min_size!r}")
    if min_size * clients > total:
        raise PartitionError(
            f"min_size={min_size} for {clients} clients needs {min_size * clients} examples "
            f"but there are only {total}; lower min_size or use fewer clients"
        )


def _finish(parts: Sequence[list[np.ndarray]]) -> list[np.ndarray]:
    """Each client's pieces joined into one sorted int64 index array."""
    return [
        np.sort(np.concatenate(pieces)).astype(np.int64) if pieces else np.zeros(0, dtype=np.int64)
        for pieces in parts
    ]


def _split_by_proportions(indices: np.ndarray, proportions: np.ndarray) -> list[np.ndarray]:
    """Cut ``indices`` into consecutive pieces whose sizes follow ``proportions``.

    Boundaries are the rounded-down cumulative shares, so the pieces always add up to
    ``len(indices)`` whatever the floating-point rounding of the proportions.
    """
    bounds = (np.cumsum(proportions)[:-1] * len(indices)).astype(np.int64)
    return np.split(indices, np.clip(bounds, 0, len(indices)))


def iid(labels: np.ndarray, clients: int, seed: int) -> list[np.ndarray]:
    """A uniformly random split into ``clients`` parts whose sizes differ by at most one."""
    array = _check_labels(labels)
    _check_clients(clients, array.size)
    order = np.random.default_rng(seed).permutation(array.size)
    return _finish([[part] for part in np.array_split(order, clients)])


def dirichlet(
    labels: np.ndarray,
    clients: int,
    alpha: float,
    seed: int,
    *,
    min_size: int = 10,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
) -> list[np.ndarray]:
    """Label skew: each class shared among clients in Dirichlet(alpha) proportions (Hsu et al.).

    For every class independently, proportions ``p ~ Dir(alpha·1)`` over the clients are drawn
    and that class's examples, shuffled, are cut in those proportions. A draw that leaves
    any client with fewer than ``min_size`` examples in total is thrown away and redrawn
    (a client with no data cannot train, and one with two examples only adds noise), up
    to ``max_attempts`` draws; the rejection keeps the Dirichlet's shape, which a floor
    added afterwards would not.
    """
    array = _check_labels(labels)
    _check_clients(clients, array.size)
    concentration = _check_alpha(alpha)
    _check_min_size(min_size, clients, array.size)
    if max_attempts < 1:
        raise PartitionError(f"max_attempts must be at least 1, got {max_attempts}")
    rng = np.random.default_rng(seed)
    # Each class's members are found once, not on every attempt: the search is a full
    # pass over the labels per class, and only the shuffle below needs redrawing.
    by_class = [np.flatnonzero(array == label) for label in np.unique(array)]
    smallest = 0
    for _ in range(max_attempts):
        parts: list[list[np.ndarray]] = [[] for _ in range(clients)]
        for indices in by_class:
            members = rng.permutation(indices)
            proportions = rng.dirichlet(np.full(clients, concentration))
            for client, piece in enumerate(_split_by_proportions(members, proportions)):
                parts[client].append(piece)
        sizes = [sum(len(piece) for piece in pieces) for pieces in parts]
        smallest = min(sizes)
        if smallest >= min_size:
            return _finish(parts)
    raise PartitionError(
        f"no Dirichlet(alpha={concentration:g}) draw out of {max_attempts} gave each of "
        f"{clients} clients at least min_size={min_size} of {array.size} examples (the last "
        f"gave its smallest client {smallest}); raise alpha, lower min_size, use fewer "
        "clients, or allow more max_attempts"
    )


def shards(
    labels: np.ndarray, clients: int, classes_per_client: int, seed: int
) -> list[np.ndarray]:
    """Pathological label skew: every client holds exactly ``classes_per_client`` classes.

    McMahan et al. sort the examples by label, cut them into ``2·clients`` shards and deal
    two to each client, which can hand a client two shards of one class, or a shard that
    straddles two. Here the guarantee is exact instead: the classes, in a seeded random
    order, form a ring, client ``i`` takes the ``classes_per_client`` consecutive classes
    starting at position ``i·classes_per_client``, and each class's examples are shuffled
    and split evenly among the clients that hold it. Every class is held by some client
    (which needs ``clients·classes_per_client`` ≥ the number of classes) and every class
    needs at least as many examples as it has holders.
    """
    array = _check_labels(labels)
    _check_clients(clients, array.size)
    classes = np.unique(array)
    k = classes_per_client
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k <= len(classes):
        raise PartitionError(
            f"classes_per_client must be an integer from 1 to the {len(classes)} classes "
            f"present, got {classes_per_client!r}"
        )
    if clients * k < len(classes):
        raise PartitionError(
            f"{clients} clients with {k} classes each hold at most {clients * k} classes, "
            f"but the labels have {len(classes)}: every example must go to some client, so "
            f"use at least {math.ceil(len(classes) / k)} clients or more classes per client"
        )
    rng = np.random.default_rng(seed)
    ring = rng.permutation(len(classes))
    holders: dict[int, list[int]] = {int(c): [] for c in range(len(classes))}
    for client in range(clients):
        for j in range(k):
            holders[int(ring[(client * k + j) % len(classes)])].append(client)
    parts: list[list[np.ndarray]] = [[] for _ in range(clients)]
    for position, label in enumerate(classes):
        members = rng.permutation(np.flatnonzero(array == label))
        owners = holders[position]
        if len(members) < len(owners):
            raise PartitionError(
                f"class {label!r} has {len(members)} example(s) but {len(owners)} clients "
                "hold it, so some would get none of it; use fewer clients or fewer classes "
                "per client"
            )
        for client, piece in zip(owners, np.array_split(members, len(owners)), strict=True):
            parts[client].append(piece)
    return _finish(parts)


def quantity_skew(
    labels: np.ndarray, clients: int, alpha: float, seed: int, *, min_size: int = 1
) -> list[np.ndarray]:
    """Quantity skew: IID labels, client sizes in Dirichlet(alpha) proportions.

    Each client first gets ``min_size`` examples, so none is left empty, and the rest of a
    seeded shuffle of all indices is cut in proportions ``q ~ Dir(alpha·1)``. Labels stay IID
    within each client; only how much data each holds differs, the skew of
    Li et al. (2022).
    """
    array = _check_labels(labels)
    _check_clients(clients, array.size)
    concentration = _check_alpha(alpha)
    _check_min_size(min_size, clients, array.size)
    rng = np.random.default_rng(seed)
    order = rng.permutation(array.size)
    floor, rest = order[: min_size * clients], order[min_size * clients :]
    proportions = rng.dirichlet(np.full(clients, concentration))
    pieces = _split_by_proportions(rest, proportions)
    return _finish(
        [
            [floor[client * min_size : (client + 1) * min_size], piece]
            for client, piece in enumerate(pieces)
        ]
    )


def stratified_holdout(
    labels: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(train, test)`` sorted index arrays, ``fraction`` of every class in ``test``.

    Each class gives ``round(fraction · its size)`` randomly chosen examples to the test
    set (at least one, and at least one stays for training, when the class has two), so
    a skewed partition of the training set is scored on every class.
    """
    array = _check_labels(labels)
    if not 0.0 < fraction < 1.0:
        raise PartitionError(f"the test fraction must lie strictly between 0 and 1, got {fraction}")
    rng = np.random.default_rng(seed)
    train: list[np.ndarray] = []
    test: list[np.ndarray] = []
    for label in np.unique(array):
        members = rng.permutation(np.flatnonzero(array == label))
        count = min(max(round(fraction * members.size), 1), members.size - 1)
        test.append(members[:count])
        train.append(members[count:])
    train_part, test_part = _finish([train, test])
    return train_part, test_part


def partition_table(labels: np.ndarray, parts: Sequence[np.ndarray]) -> np.ndarray:
    """Examples per client (rows) and class (columns, the sorted distinct labels).

    ``parts`` is what a partitioner returned; the table's row sums are the client sizes
    and its column sums the class sizes (when the parts cover the data).
    """
    array = _check_labels(labels)
    classes, codes = np.unique(array, return_inverse=True)
    table = np.zeros((len(parts), len(classes)), dtype=np.int64)
    for client, indices in enumerate(parts):
        index = np.asarray(indices)
        if index.size and (
            not np.issubdtype(index.dtype, np.integer)
            or index.min() < 0
            or index.max() >= array.size
        ):
            raise PartitionError(
                f"part {client} must hold integer indices into the {array.size} labels, got "
                f"dtype {index.dtype} with values from {index.min()} to {index.max()}"
            )
        table[client] = np.bincount(codes[index], minlength=len(classes))
    return table
