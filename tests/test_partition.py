"""Tests for fedvc.simulation.partition: every split is a partition, seeded, and as skewed as
it claims to be."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from fedvc.simulation import (
    PartitionError,
    dirichlet,
    iid,
    partition_table,
    quantity_skew,
    shards,
    stratified_holdout,
)

LABELS = np.random.default_rng(0).integers(0, 10, size=2000)

Partitioner = Callable[[np.ndarray, int], list[np.ndarray]]
PARTITIONERS: dict[str, Partitioner] = {
    "iid": lambda labels, seed: iid(labels, 7, seed),
    "dirichlet": lambda labels, seed: dirichlet(labels, 7, 0.5, seed),
    "shards": lambda labels, seed: shards(labels, 7, 2, seed),
    "quantity_skew": lambda labels, seed: quantity_skew(labels, 7, 0.5, seed),
}


@pytest.mark.parametrize("name", sorted(PARTITIONERS))
def test_parts_are_disjoint_and_cover_every_index(name: str) -> None:
    parts = PARTITIONERS[name](LABELS, 3)
    assert len(parts) == 7
    assert all(part.dtype == np.int64 and np.all(np.diff(part) > 0) for part in parts)
    joined = np.concatenate(parts)
    assert len(joined) == len(LABELS)  # disjoint: nothing counted twice
    assert np.array_equal(np.sort(joined), np.arange(len(LABELS)))  # covering


@pytest.mark.parametrize("name", sorted(PARTITIONERS))
def test_same_seed_same_split_other_seed_other_split(name: str) -> None:
    first, again = PARTITIONERS[name](LABELS, 11), PARTITIONERS[name](LABELS, 11)
    other = PARTITIONERS[name](LABELS, 12)
    assert all(np.array_equal(x, y) for x, y in zip(first, again, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(first, other, strict=True))


def test_global_random_state_is_neither_used_nor_changed() -> None:
    np.random.seed(1)
    a = dirichlet(LABELS, 5, 0.3, seed=4)
    after = np.random.random()
    np.random.seed(1)
    untouched = np.random.random()
    np.random.seed(2)
    b = dirichlet(LABELS, 5, 0.3, seed=4)
    assert after == untouched
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_iid_sizes_differ_by_at_most_one() -> None:
    sizes = [len(part) for part in iid(LABELS, 7, seed=0)]
    assert max(sizes) - min(sizes) <= 1


def _dominant_share(table: np.ndarray) -> float:
    """Mean over clients of the share of their most common class."""
    return float(np.mean(table.max(axis=1) / table.sum(axis=1)))


def test_dirichlet_small_alpha_is_skewed_large_alpha_is_not() -> None:
    skewed = partition_table(LABELS, dirichlet(LABELS, 10, 0.1, seed=0))
    even = partition_table(LABELS, dirichlet(LABELS, 10, 1000.0, seed=0))
    assert _dominant_share(skewed) > 0.5
    assert _dominant_share(even) < 0.2
    # a client under strong skew misses most classes; under alpha = 1000 it has all of them
    assert np.mean(skewed == 0) > 0.4
    assert np.all(even > 0)


def test_dirichlet_respects_min_size() -> None:
    parts = dirichlet(LABELS, 20, 0.1, seed=0, min_size=30)
    assert min(len(part) for part in parts) >= 30


def test_dirichlet_draws_are_those_of_the_plain_per_attempt_algorithm() -> None:
    # The class members are found once, before the attempts; the random stream must be
    # the one of the straightforward loop, so every seeded split stays bit-identical.
    def reference(
        labels: np.ndarray, clients: int, alpha: float, seed: int, min_size: int
    ) -> list[np.ndarray]:
        rng = np.random.default_rng(seed)
        while True:
            parts: list[list[np.ndarray]] = [[] for _ in range(clients)]
            for label in np.unique(labels):
                members = rng.permutation(np.flatnonzero(labels == label))
                proportions = rng.dirichlet(np.full(clients, alpha))
                bounds = (np.cumsum(proportions)[:-1] * len(members)).astype(np.int64)
                for client, piece in enumerate(np.split(members, bounds)):
                    parts[client].append(piece)
            if min(sum(len(p) for p in pieces) for pieces in parts) >= min_size:
                return [np.sort(np.concatenate(pieces)) for pieces in parts]

    # this seed needs 8 draws for min_size 100, so the reuse across attempts is exercised
    got = dirichlet(LABELS, 10, 0.3, 0, min_size=100)
    want = reference(LABELS, 10, 0.3, 0, 100)
    assert all(np.array_equal(x, y) for x, y in zip(got, want, strict=True))


def test_dirichlet_gives_up_with_a_clear_error() -> None:
    with pytest.raises(PartitionError, match=r"no Dirichlet.*draw out of 5.*min_size=95"):
        dirichlet(LABELS, 20, 0.01, seed=0, min_size=95, max_attempts=5)
    with pytest.raises(PartitionError, match="only 2000"):
        dirichlet(LABELS, 20, 0.5, seed=0, min_size=101)


def test_shards_give_each_client_exactly_k_classes() -> None:
    for k in (1, 2, 3, 10):
        table = partition_table(LABELS, shards(LABELS, 10, k, seed=5))
        assert np.all((table > 0).sum(axis=1) == k)
        assert np.all(table.sum(axis=0) == np.bincount(LABELS))


def test_shards_errors() -> None:
    with pytest.raises(PartitionError, match="at least 5 clients"):
        shards(LABELS, 4, 2, seed=0)
    with pytest.raises(PartitionError, match="from 1 to the 10 classes"):
        shards(LABELS, 4, 11, seed=0)
    with pytest.raises(PartitionError, match=r"1 example\(s\) but 2 clients"):
        shards(np.array([0, 0, 0, 1]), 4, 1, seed=0)


def test_quantity_skew_skews_sizes_not_labels() -> None:
    parts = quantity_skew(LABELS, 10, 0.2, seed=0, min_size=5)
    sizes = np.array([len(part) for part in parts])
    assert sizes.min() >= 5
    assert sizes.max() > 4 * np.median(sizes)
    big = max(parts, key=len)
    share = np.bincount(LABELS[big], minlength=10) / len(big)
    assert np.allclose(share, np.bincount(LABELS) / len(LABELS), atol=0.05)


def test_partition_table_counts() -> None:
    labels = np.array([3, 7, 3, 3, 7, 9])
    table = partition_table(labels, [np.array([0, 1]), np.array([2, 3, 4, 5])])
    assert table.tolist() == [[1, 1, 0], [2, 1, 1]]
    with pytest.raises(PartitionError, match="integer indices"):
        partition_table(labels, [np.array([0, 6])])


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: iid(LABELS, 0, 0), "positive integer"),
        (lambda: iid(LABELS, 2001, 0), "at most 2000 clients"),
        (lambda: iid(LABELS.reshape(40, 50), 2, 0), "1-D"),
        (lambda: iid(np.array([]), 2, 0), "empty"),
        (lambda: dirichlet(LABELS, 5, 0.0, 0), "alpha"),
        (lambda: dirichlet(LABELS, 5, float("nan"), 0), "alpha"),
        (lambda: quantity_skew(LABELS, 5, -1.0, 0), "alpha"),
        (lambda: dirichlet(LABELS, 5, None, 0), "alpha"),  # type: ignore[arg-type]
        (lambda: quantity_skew(LABELS, 5, "lots", 0), "alpha"),  # type: ignore[arg-type]
        (lambda: dirichlet(LABELS, 5, 0.5, 0, min_size=-1), "min_size"),
    ],
)
def test_bad_arguments_are_refused(call: Callable[[], object], message: str) -> None:
    with pytest.raises(PartitionError, match=message):
        call()


def test_partition_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        iid(LABELS, 0, 0)


def test_stratified_holdout_keeps_every_class_in_proportion() -> None:
    labels = np.repeat(np.arange(4), [100, 50, 10, 2])
    train, test = stratified_holdout(labels, 0.3, seed=5)
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(labels.size))
    assert np.bincount(labels[test]).tolist() == [30, 15, 3, 1]
    again, _ = stratified_holdout(labels, 0.3, seed=5)
    other, _ = stratified_holdout(labels, 0.3, seed=6)
    assert np.array_equal(train, again) and not np.array_equal(train, other)
    with pytest.raises(PartitionError, match="strictly between 0 and 1"):
        stratified_holdout(labels, 1.0, seed=0)
