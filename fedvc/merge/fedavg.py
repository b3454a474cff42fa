"""Federated averaging and the server optimizers built on it.

``fedavg`` is the example-weighted mean of the clients' models. The server optimizers
treat ``mean - base`` as a pseudo-gradient and step with momentum (``fedavgm``) or an
adaptive rule (``fedadagrad``, ``fedadam``, ``fedyogi``), keeping their moments in the
strategy state so that every round's merge is a pure function of its inputs.

All of them stream: an accumulator adds each update into one running sum, chunk by chunk
so the temporaries stay in cache, and holds one model-sized buffer however many clients
report.

References:
    McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized
    Data", AISTATS 2017 (FedAvg).
    Hsu, Qi, Brown, "Measuring the Effects of Non-Identical Data Distribution for
    Federated Visual Classification", 2019 (FedAvgM).
    Reddi et al., "Adaptive Federated Optimization", ICLR 2021 (FedAdagrad, FedAdam,
    FedYogi).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from fedvc.merge.base import (
    MergeError,
    MergeStrategy,
    State,
    StrategySpec,
    Update,
    check_same_structure,
    require_weight,
    stateless,
    streaming_strategy,
)
from fedvc.tensors import ParamMap

CHUNK = 1 << 16
"""Elements per step of the running sum: 256 KiB of float32, so temporaries stay in cache."""


def _accumulator_dtype(dtype: np.dtype) -> np.dtype:
    """Floats accumulate in their own precision (float16 in float32); integers in float64."""
    if dtype == np.float64:
        return np.dtype(np.float64)
    return np.dtype(np.float32) if np.issubdtype(dtype, np.floating) else np.dtype(np.float64)


def _add_scaled(total: np.ndarray, values: np.ndarray, weight: float, scratch: np.ndarray) -> None:
    """``total += weight * values`` in cache-sized chunks, without a model-sized temporary."""
    _add_scaled_many(total, [values], [weight], scratch)


def _add_scaled_many(
    total: np.ndarray, values: Sequence[np.ndarray], weights: Sequence[float], scratch: np.ndarray
) -> None:
    """``total += Σ wᵢ valuesᵢ``, chunk by chunk of ``total``.

    Every update is added into one chunk of the sum before moving on, so the chunk stays
    in cache however many updates there are. Each element still sees the same operations
    in the same order as adding the updates one at a time, so both give the same bits.
    """
    flat_total = total.reshape(-1)
    flats = [np.asarray(v).reshape(-1) for v in values]
    for start in range(0, flat_total.size, CHUNK):
        stop = min(start + CHUNK, flat_total.size)
        part, accumulated = scratch[: stop - start], flat_total[start:stop]
        for flat, weight in zip(flats, weights, strict=True):
            np.multiply(flat[start:stop], weight, out=part, casting="unsafe")
            np.add(accumulated, part, out=accumulated)


class WeightedMean:
    """Running ``Σ wᵢ θᵢ / Σ wᵢ`` over updates added one at a time."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sums: dict[str, np.ndarray] = {}
        self.dtypes: dict[str, np.dtype] = {}
        self.total = 0.0
        self.count = 0
        self._scratch: dict[np.dtype, np.ndarray] = {}

    def add(self, update: Update) -> None:
        self.add_all([update])

    def add_all(self, updates: Sequence[Update]) -> None:
        """Add several updates at once (faster than one by one; the same bits)."""
        for update in updates:
            self._check(update)
        for key, total in self.sums.items():
            scratch = self._scratch.setdefault(total.dtype, np.empty(CHUNK, total.dtype))
            arrays = [u.params[key] for u in updates]
            _add_scaled_many(total, arrays, [u.weight for u in updates], scratch)
        self.total += sum(u.weight for u in updates)
        self.count += len(updates)

    def _check(self, update: Update) -> None:
        if self.sums:
            check_same_structure(self.sums, [update], strategy=self.name)
            return
        for key, array in update.params.items():
            self.sums[key] = np.zeros(array.shape, _accumulator_dtype(array.dtype))
            self.dtypes[key] = array.dtype

    def mean(self) -> dict[str, np.ndarray]:
        """The weighted mean in each tensor's own dtype (integers rounded)."""
        require_weight(self.name, self.count, self.total)
        result = {}
        for key, total in self.sums.items():
            total /= self.total
            dtype = self.dtypes[key]
            if not np.issubdtype(dtype, np.floating):
                np.rint(total, out=total)
            result[key] = total.astype(dtype, copy=False)
        self.sums = {}
        return result


class _MeanAccumulator:
    def __init__(
        self,
        name: str,
        finish: Callable[[dict[str, np.ndarray]], tuple[dict[str, np.ndarray], State]],
    ):
        self._mean = WeightedMean(name)
        self._finish = finish

    def add(self, update: Update) -> None:
        self._mean.add(update)

    def add_all(self, updates: Sequence[Update]) -> None:
        self._mean.add_all(updates)

    def finish(self) -> tuple[dict[str, np.ndarray], State]:
        return self._finish(self._mean.mean())


def fedavg() -> MergeStrategy:
    """Example-weighted average of the clients' models (McMahan et al. 2017)."""
    spec = StrategySpec("fedavg")

    def accumulate(base: ParamMap | None, state: State) -> _MeanAccumulator:
        return _MeanAccumulator("fedavg", lambda mean: (mean, {}))

    return streaming_strategy(spec, stateless, accumulate)


def _server_optimizer(
    spec: StrategySpec,
    moments: tuple[str, ...],
    step: Callable[[np.ndarray, dict[str, np.ndarray]], np.ndarray],
) -> MergeStrategy:
    """A strategy that applies ``step(pseudo_gradient, moments) -> change`` to the base.

    ``moments`` names the state kept per tensor (``"m"`` → ``"m/<tensor>"``); ``step``
    updates them in place. Integer tensors (counters) take the plain mean.
    """

    def init(base: ParamMap | None) -> State:
        if base is None:
            raise MergeError(f"{spec.name} steps from the round's base model; give one")
        return {
            f"{moment}/{name}": np.zeros(
                array.shape, np.float32 if array.dtype != np.float64 else np.float64
            )
            for moment in moments
            for name, array in base.items()
            if np.issubdtype(array.dtype, np.floating)
        }

    def accumulate(base: ParamMap | None, state: State) -> _MeanAccumulator:
        if base is None:
            raise MergeError(f"{spec.name} steps from the round's base model; give one")
        state = {key: value.copy() for key, value in (state or init(base)).items()}

        def finish(mean: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], State]:
            result = {}
            for name, average in mean.items():
                origin = base[name]
                if not np.issubdtype(origin.dtype, np.floating):
                    result[name] = average
                    continue
                gradient = average.astype(state[f"{moments[0]}/{name}"].dtype) - origin
                slots = {moment: state[f"{moment}/{name}"] for moment in moments}
                result[name] = (origin + step(gradient, slots)).astype(origin.dtype)
            return result, state

        return _MeanAccumulator(spec.name, finish)

    return streaming_strategy(spec, init, accumulate)


def fedavgm(server_lr: float = 1.0, momentum: float = 0.9) -> MergeStrategy:
    """FedAvg with server momentum: ``v ← βv + Δ; x ← x + ηv`` (Hsu et al. 2019)."""

    def step(delta: np.ndarray, slots: dict[str, np.ndarray]) -> np.ndarray:
        velocity = slots["v"]
        velocity *= momentum
        velocity += delta
        return server_lr * velocity

    spec = StrategySpec("fedavgm", {"server_lr": server_lr, "momentum": momentum})
    return _server_optimizer(spec, ("v",), step)


def _adaptive(name: str, server_lr: float, beta1: float, beta2: float, tau: float) -> MergeStrategy:
    """FedAdagrad / FedAdam / FedYogi (Reddi et al. 2021, Algorithm 2)."""

    def step(delta: np.ndarray, slots: dict[str, np.ndarray]) -> np.ndarray:
        m, v = slots["m"], slots["v"]
        m *= beta1
        m += (1 - beta1) * delta
        square = delta * delta
        if name == "fedadagrad":
            v += square
        elif name == "fedadam":
            v *= beta2
            v += (1 - beta2) * square
        else:  # fedyogi
            v -= (1 - beta2) * square * np.sign(v - square)
        change: np.ndarray = server_lr * m / (np.sqrt(v) + tau)
        return change

    params = {"server_lr": server_lr, "beta1": beta1, "beta2": beta2, "tau": tau}
    if name == "fedadagrad":
        params.pop("beta2")
    return _server_optimizer(StrategySpec(name, params), ("m", "v"), step)


def fedadagrad(server_lr: float = 0.1, beta1: float = 0.0, tau: float = 1e-3) -> MergeStrategy:
    return _adaptive("fedadagrad", server_lr, beta1, 0.0, tau)


def fedadam(
    server_lr: float = 0.01, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3
) -> MergeStrategy:
    return _adaptive("fedadam", server_lr, beta1, beta2, tau)


def fedyogi(
    server_lr: float = 0.01, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3
) -> MergeStrategy:
    return _adaptive("fedyogi", server_lr, beta1, beta2, tau)
