"""Byzantine-robust aggregation: coordinate-wise median and trimmed mean, Krum, Multi-Krum,
and norm clipping.

A federated server cannot trust every client: a faulty or malicious one can send any
model. A mean lets one such client move the result arbitrarily far; the rules here bound
its influence instead.

- ``median`` and ``trimmed_mean`` work coordinate by coordinate: each entry of the result
  is the median (or the mean after dropping the ⌊β·n⌋ largest and smallest values) of that
  entry across clients.
- ``krum`` and ``multikrum`` work on whole models: each client is scored by its summed
  squared distance to its n - f - 2 nearest neighbours, and the best-scored ones win.
- ``clip_by_norm`` is an update transform: it shrinks any delta longer than ``max_norm``,
  which bounds what one client can add to a mean (use it in ``chain`` before ``fedavg``).

Models or deltas? The aggregators work on the clients' models directly, never on deltas
to the base, so the base is optional. It would not change the answer: the median and the
trimmed mean commute with a shift (``median(θᵢ - b) + b = median(θᵢ)``, since subtracting
``b`` keeps every coordinate's order), and Krum's distances ``‖θᵢ - θⱼ‖ = ‖Δᵢ - Δⱼ‖`` do
not see the base at all. Working on models skips the rounding that ``θ - b`` and ``+ b``
would add, so a result's entries are exactly some client's entries where the rule picks
one value.

Weights: median, trimmed mean and Krum ignore ``Update.weight`` on purpose. A weight is a
client's own claim (its example count), and a Byzantine client would claim a huge one;
counting clients, not claimed examples, is what makes these rules robust. Multi-Krum,
which averages clients it has already judged trustworthy, weights that average by example
count, as FedAvg would.

Non-finite values: coordinates are sorted with NaN after +inf, so a minority of clients
sending NaN or inf cannot poison the median or (for at most ⌊β·n⌋ of them) the trimmed
mean. Krum treats a non-finite distance as infinitely far, so such a client is never
picked while finite ones remain.

Integer and bool tensors (BatchNorm's ``num_batches_tracked``) take the same rule and are
rounded half to even back to their dtype. Krum leaves them out of its distances: a counter
measures how long a client trained, not where its model lies, and would otherwise make
Krum choose by dataset size. The chosen client's counters come along with its model.

None of these rules stream: each needs every client's value at once. ``median``,
``trimmed_mean`` and Krum's scoring go tensor by tensor and ``CHUNK`` entries at a time,
so their working memory is O(clients · CHUNK) on top of the O(model) result. Multi-Krum's
weighted mean and ``clip_by_norm`` work a whole tensor at a time in float64, so they also
take a few float64 copies of the largest tensor.

References:
    Yin, Chen, Ramchandran, Bartlett, "Byzantine-Robust Distributed Learning: Towards
    Optimal Statistical Rates", ICML 2018 (coordinate-wise median and trimmed mean).
    Blanchard, El Mhamdi, Guerraoui, Stainer, "Machine Learning with Adversaries:
    Byzantine Tolerant Gradient Descent", NeurIPS 2017 (Krum and Multi-Krum).
    Sun, Kairouz, Suresh, McMahan, "Can You Really Backdoor Federated Learning?", 2019
    (norm clipping against backdoors).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from fedvc.diff import distance
from fedvc.merge.base import (
    MergeError,
    MergeStrategy,
    State,
    StrategySpec,
    Update,
    UpdateTransform,
    check_same_structure,
    finite_number,
    ordered,
    per_update,
    require_updates,
    require_weight,
    stateless,
)
from fedvc.tensors import ParamMap

CHUNK = 1 << 14
"""Entries per client per step: 128 KiB of float64 each, so 100 clients take ~13 MiB."""

_EPSILON = 1e-9
"""Slack for ``⌊beta · n⌋``, so that beta = 0.3 with n = 10 drops 3, not 2."""


def _prepare(
    name: str, base: ParamMap | None, updates: Sequence[Update]
) -> tuple[list[Update], ParamMap]:
    """Updates in client order, checked against each other and the base, and the map
    whose names, shapes and dtypes the result takes."""
    require_updates(updates, name)
    clients = ordered(updates)
    check_same_structure(base, clients)
    return clients, base if base is not None else clients[0].params


def _flat(array: np.ndarray) -> np.ndarray:
    return np.asarray(array).reshape(-1)


def _floating(dtype: np.dtype) -> bool:
    return bool(np.issubdtype(dtype, np.floating))


def _cast(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Float64 results back into a tensor's dtype; integers and bools round half to even."""
    if not _floating(dtype):
        values = np.rint(values)
    return values.astype(dtype)


def _blocks(flats: Sequence[np.ndarray], axis: int) -> Callable[[int, int], np.ndarray]:
    """``block(start, stop)``: entries ``start:stop`` of every client, stacked in float64
    along ``axis`` (-1: one row per entry; 0: one row per client)."""

    def block(start: int, stop: int) -> np.ndarray:
        return np.stack([flat[start:stop] for flat in flats], axis=axis, dtype=np.float64)

    return block


Reducer = Callable[[np.ndarray], np.ndarray]
"""Maps a (entries, clients) block, each row sorted, to one value per entry."""


def _coordinatewise(spec: StrategySpec, reducer: Callable[[int], Reducer]) -> MergeStrategy:
    """A strategy that sorts each coordinate's values across clients and reduces them;
    ``reducer(n)`` builds the reduction for n clients."""

    def merge(
        base: ParamMap | None, updates: Sequence[Update], state: State
    ) -> tuple[dict[str, np.ndarray], State]:
        clients, reference = _prepare(spec.name, base, updates)
        reduce = reducer(len(clients))
        result: dict[str, np.ndarray] = {}
        for key in sorted(reference):
            dtype = reference[key].dtype
            flats = [_flat(update.params[key]) for update in clients]
            block = _blocks(flats, axis=-1)
            out = np.empty(flats[0].size, dtype)
            for start in range(0, out.size, CHUNK):
                stop = min(start + CHUNK, out.size)
                values = block(start, stop)
                values.sort(axis=-1)  # NaN sorts last: it counts as the largest value
                out[start:stop] = _cast(reduce(values), dtype)
            result[key] = out.reshape(reference[key].shape)
        return result, {}

    return MergeStrategy(spec, stateless, merge)


def median() -> MergeStrategy:
    """Coordinate-wise median of the clients' models (Yin et al. 2018).

    With an even number of clients each coordinate takes the mean of its two middle
    values. It tolerates any minority of Byzantine clients per coordinate.
    """

    def reducer(n: int) -> Reducer:
        middle = n // 2
        if n % 2:
            return lambda values: values[:, middle]
        return lambda values: 0.5 * (values[:, middle - 1] + values[:, middle])

    return _coordinatewise(StrategySpec("median"), reducer)


def trimmed_mean(beta: float = 0.1) -> MergeStrategy:
    """Coordinate-wise β-trimmed mean (Yin et al. 2018).

    Each coordinate drops its ⌊β·n⌋ largest and ⌊β·n⌋ smallest values across the n
    clients and averages the rest, so up to ⌊β·n⌋ Byzantine clients cannot move it
    outside the honest clients' range. ``beta`` is in [0, 0.5): 0 is the plain
    (unweighted) mean, values near 0.5 approach the median.
    """
    if not isinstance(beta, (int, float)) or isinstance(beta, bool) or not 0 <= beta < 0.5:
        raise MergeError(
            f"trimmed_mean(beta=...) is the fraction trimmed from each end, in [0, 0.5); "
            f"got {beta!r}"
        )

    def reducer(n: int) -> Reducer:
        trim = math.floor(beta * n + _EPSILON)
        kept = n - 2 * trim  # ≥ 1 because beta < 0.5

        def reduce(values: np.ndarray) -> np.ndarray:
            # Averaging offsets from the smallest kept value keeps equal values exact.
            low = values[:, trim]
            mean: np.ndarray = low + (values[:, trim : n - trim] - low[:, None]).sum(axis=-1) / kept
            return mean

        return reduce

    return _coordinatewise(StrategySpec("trimmed_mean", {"beta": float(beta)}), reducer)


def _check_f(name: str, f: int) -> None:
    if not isinstance(f, int) or isinstance(f, bool) or f < 0:
        raise MergeError(
            f"{name}(f=...) is the number of Byzantine clients to tolerate, an integer ≥ 0; "
            f"got {f!r}"
        )


def _krum_ranking(name: str, f: int, clients: Sequence[Update], reference: ParamMap) -> list[int]:
    """Client indices from best to worst Krum score (ties go to the earlier client).

    A client's score is the sum of its squared distances to its n - f - 2 nearest
    neighbours, over the floating tensors of the flattened models. The pairwise distances
    add up tensor by tensor and chunk by chunk, so no model is ever flattened whole.
    """
    n = len(clients)
    if n <= 2 * f + 2:
        raise MergeError(
            f"{name}(f={f}) needs more than 2f + 2 = {2 * f + 2} updates to tolerate {f} "
            f"Byzantine client(s), got {n}; wait for more clients or lower f"
        )
    distances = np.zeros((n, n))
    with np.errstate(invalid="ignore", over="ignore"):
        for key in sorted(reference):
            if not _floating(reference[key].dtype):
                continue
            flats = [_flat(update.params[key]) for update in clients]
            block = _blocks(flats, axis=0)
            for start in range(0, flats[0].size, CHUNK):
                values = block(start, min(start + CHUNK, flats[0].size))
                for i in range(n - 1):
                    differences = values[i + 1 :] - values[i]
                    distances[i, i + 1 :] += np.einsum("ij,ij->i", differences, differences)
    distances += distances.T
    distances[~np.isfinite(distances)] = np.inf  # NaN or overflow: infinitely far
    neighbours = n - f - 2
    scores = [np.sort(np.delete(distances[i], i))[:neighbours].sum() for i in range(n)]
    return [int(i) for i in np.argsort(np.array(scores), kind="stable")]


def krum(f: int = 1) -> MergeStrategy:
    """The one client model with the best Krum score (Blanchard et al. 2017).

    Tolerates ``f`` Byzantine clients among n > 2f + 2. The result is that client's model
    unchanged (cast to the base's dtypes when a base is given).
    """
    _check_f("krum", f)
    spec = StrategySpec("krum", {"f": f})

    def merge(
        base: ParamMap | None, updates: Sequence[Update], state: State
    ) -> tuple[dict[str, np.ndarray], State]:
        clients, reference = _prepare("krum", base, updates)
        chosen = clients[_krum_ranking("krum", f, clients, reference)[0]]
        return {
            key: np.array(chosen.params[key], dtype=reference[key].dtype)
            for key in sorted(reference)
        }, {}

    return MergeStrategy(spec, stateless, merge)


def multikrum(f: int = 1, m: int | None = None) -> MergeStrategy:
    """The example-weighted mean of the ``m`` best-scored clients (Blanchard et al. 2017).

    ``m`` defaults to n - f, every client but as many as may be Byzantine; ``m = 1`` is
    Krum. The selected clients are averaged as FedAvg would (weighted by
    ``Update.weight``): once Krum has judged them trustworthy, a client with more data
    should count for more. A client cannot buy its way into the selection with a large
    weight, since scores ignore weights.
    """
    _check_f("multikrum", f)
    if m is not None and (not isinstance(m, int) or isinstance(m, bool) or m < 1):
        raise MergeError(
            f"multikrum(m=...) is how many updates to average, an integer ≥ 1 (or None for "
            f"n - f); got {m!r}"
        )
    spec = StrategySpec("multikrum", {"f": f, "m": m})

    def merge(
        base: ParamMap | None, updates: Sequence[Update], state: State
    ) -> tuple[dict[str, np.ndarray], State]:
        clients, reference = _prepare("multikrum", base, updates)
        count = len(clients) - f if m is None else m
        if count > len(clients):
            raise MergeError(
                f"multikrum(m={m}) averages {count} updates but only {len(clients)} arrived; "
                "lower m or wait for more clients"
            )
        ranking = _krum_ranking("multikrum", f, clients, reference)
        selected = [clients[i] for i in sorted(ranking[:count])]
        total = sum(update.weight for update in selected)
        require_weight("multikrum", count, total)
        result: dict[str, np.ndarray] = {}
        for key in sorted(reference):
            # Offsets from the first selected model: identical models average exactly.
            anchor = _flat(selected[0].params[key]).astype(np.float64)
            offset = np.zeros(anchor.size)
            for update in selected[1:]:
                offset += (_flat(update.params[key]) - anchor) * update.weight
            mean = anchor + offset / total
            result[key] = _cast(mean, reference[key].dtype).reshape(reference[key].shape)
        return result, {}

    return MergeStrategy(spec, stateless, merge)


def clip_by_norm(max_norm: float) -> UpdateTransform:
    """Shrink each update's delta ``params - base`` to a global L2 norm of at most
    ``max_norm`` (Sun et al. 2019).

    A delta already within the bound passes unchanged (bit for bit); a longer one becomes
    ``base + (max_norm / ‖Δ‖) · Δ``, computed in float64 and rounded to each tensor's
    dtype, so the new norm is ``max_norm`` up to that rounding. The norm covers the
    floating tensors only; integer tensors (counters) pass unchanged. Fisher information
    and extras are left as they are. Each update is clipped on its own, so
    ``chain(clip_by_norm(5.0), fedavg())`` still streams. A delta with NaN or inf entries
    cannot be bounded and is refused.
    """
    finite_number("clip_by_norm", "max_norm", max_norm, positive=True)
    spec = StrategySpec("clip_by_norm", {"max_norm": float(max_norm)})

    def clip(base: ParamMap | None, update: Update) -> Update:
        if base is None:
            raise MergeError(
                "clip_by_norm bounds each update's delta to the round's base model; give the "
                "base (or drop clip_by_norm from the chain)"
            )
        check_same_structure(base, [update])
        length = distance(base, update.params)
        if not math.isfinite(length):
            raise MergeError(
                f"update {update.client!r}: its delta has NaN or infinite entries, so "
                "clip_by_norm cannot bound it; reject the update before merging"
            )
        if length <= max_norm:
            return update
        factor = max_norm / length
        params: dict[str, np.ndarray] = {}
        for key, moved in update.params.items():
            origin = base[key]
            if not _floating(origin.dtype):
                params[key] = moved
                continue
            start = origin.astype(np.float64)
            shrunk = start + (np.asarray(moved, dtype=np.float64) - start) * factor
            params[key] = shrunk.astype(moved.dtype)
        return update.with_params(params)

    return per_update(spec, clip)
