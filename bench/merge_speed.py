"""FedAvg merge speed: fedvc beside Flower's own aggregation and numpy's memory bandwidth.

One run, one set of inputs (C client models of P float32 parameters, a few large matrices
plus biases, integer example counts as weights), and for each method:

- wall time, best and median of N runs (without tracemalloc; the methods take turns in
  every round, so a shared machine's background load hits them alike),
- peak extra memory: tracemalloc's peak over one run (numpy reports its buffers to
  tracemalloc), result included, as a multiple of one model's bytes.

Methods:
- fedvc ``fedavg().merge`` (batch) and ``fedavg().accumulate`` (updates added one at a time),
- Flower 1.41's own functions: ``aggregate_inplace``, what ``flwr.server.strategy.FedAvg.
  aggregate_fit`` calls by default (``inplace=True``; it deserializes each client's
  ``Parameters`` bytes itself); ``aggregate``, what it calls with ``inplace=False`` (given
  ndarrays, so no deserialization is timed); ``aggregate_arrayrecords``, what the Message
  API's ``flwr.serverapp.strategy.FedAvg.aggregate_train`` calls (deserializes ``Array`` s),
- ``np.add(a, b, out=c)`` over arrays of P float32: the machine's memory bandwidth.

Bandwidth figure used for the target: any FedAvg must read every update byte once, so
``update read bandwidth = C * P * 4 bytes / merge time``, compared with np.add's read
bandwidth ``2 * P * 4 bytes / np.add time`` (np.add reads two arrays and writes one).
Informative: a streaming accumulator moves ~3 model bytes per update (read update, read and
write the running sum), i.e. one np.add's worth of traffic; ``C * np.add time / merge time``
is how close each update's pass comes to one np.add.

Usage: python bench/merge_speed.py [--params 10000000] [--clients 20] [--repeats 5]
"""

from __future__ import annotations

import argparse
import gc
import io
import os
import statistics
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import numpy as np

from fedvc.merge.base import Update
from fedvc.merge.fedavg import CHUNK, fedavg

T = TypeVar("T")
Model = dict[str, np.ndarray]
GB = 1e9
MB = 1e6
SPEED_TARGET = 2.0  # fedvc at least this many times as fast as Flower
BANDWIDTH_TARGET = 0.5  # update read bandwidth at least this fraction of np.add's
MEMORY_TARGET = 2.0  # peak extra memory at most this many models


def layout(total: int, layers: int = 4, width: int = 1024) -> list[tuple[str, tuple[int, ...]]]:
    """``layers`` (rows, width) matrices with their biases, and a last vector for the rest."""
    rows = max(1, total // (layers * (width + 1)))
    shapes: list[tuple[str, tuple[int, ...]]] = []
    used = 0
    for layer in range(layers):
        if used + rows * (width + 1) > total:
            break
        shapes += [(f"layers.{layer}.weight", (rows, width)), (f"layers.{layer}.bias", (rows,))]
        used += rows * (width + 1)
    if total > used:
        shapes.append(("head.bias", (total - used,)))
    return shapes


def make_models(params: int, clients: int, seed: int) -> tuple[list[Model], list[int]]:
    rng = np.random.default_rng(seed)
    shapes = layout(params)
    models = [
        {name: rng.standard_normal(shape, dtype=np.float32) for name, shape in shapes}
        for _ in range(clients)
    ]
    examples = [int(n) for n in rng.integers(100, 1000, size=clients)]
    return models, examples


def npy_bytes(array: np.ndarray) -> bytes:
    """The .npy bytes Flower sends for an array (``ndarray_to_bytes``, ``Array.data``)."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


@dataclass
class Row:
    name: str
    times: list[float]
    peak: int
    result: list[np.ndarray]

    @property
    def best(self) -> float:
        return min(self.times)

    @property
    def median(self) -> float:
        return statistics.median(self.times)


def traced_peak(action: Callable[[], T]) -> tuple[T, int]:
    """``action()`` and the peak bytes it had allocated at once (its result included)."""
    gc.collect()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base, _ = tracemalloc.get_traced_memory()
        result = action()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak - base


@dataclass
class Method:
    name: str
    action: Callable[[], Any]
    to_list: Callable[[Any], list[np.ndarray]]  # the result as arrays in tensor order


def measure(
    methods: Sequence[Method], add_once: Callable[[], float], repeats: int
) -> tuple[float, dict[str, list[float]]]:
    """Time every method ``repeats`` times, round-robin so that all see the same background
    load (the CPUs may be shared); returns np.add's best time, taken in every round too."""
    add_best = float("inf")
    times: dict[str, list[float]] = {method.name: [] for method in methods}
    for round_ in range(repeats):
        print(f"  round {round_ + 1}/{repeats}", flush=True)
        add_best = min([add_best] + [add_once() for _ in range(4)])
        for method in methods:
            gc.collect()
            start = time.perf_counter()
            result = method.action()
            times[method.name].append(time.perf_counter() - start)
            del result
    return add_best, times


def np_add_timer(size: int) -> Callable[[], float]:
    """A function timing one ``np.add(a, b, out=c)`` over ``size`` float32 elements."""
    a = np.ones(size, np.float32)
    b = np.full(size, 2.0, np.float32)
    c = np.zeros(size, np.float32)
    np.add(a, b, out=c)  # pages touched before timing

    def once() -> float:
        start = time.perf_counter()
        np.add(a, b, out=c)
        return time.perf_counter() - start

    return once


def max_abs_diff(left: Sequence[np.ndarray], right: Sequence[np.ndarray]) -> tuple[float, bool]:
    diff, close = 0.0, True
    for a, b in zip(left, right, strict=True):
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        diff = max(diff, float(np.max(np.abs(a64 - b64))))
        close = close and bool(np.allclose(a64, b64, rtol=1e-5, atol=1e-6))
    return diff, close


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=int, default=10_000_000, help="parameters per model")
    parser.add_argument("--clients", type=int, default=20, help="updates per merge")
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed rounds (each runs every method once)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    # Flower is an optional dependency (extra "flower"); import it only when benchmarking.
    import flwr
    from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict
    from flwr.common import Code, FitRes, Parameters, Status
    from flwr.server.client_proxy import ClientProxy
    from flwr.server.strategy.aggregate import aggregate, aggregate_inplace
    from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

    models, examples = make_models(args.params, args.clients, args.seed)
    names = list(models[0])
    model_bytes = sum(array.nbytes for array in models[0].values())
    update_bytes = args.clients * model_bytes
    print(
        f"FedAvg of {args.clients} updates x {args.params:,} float32 params "
        f"({len(names)} tensors, {model_bytes / MB:.1f} MB per model), "
        f"best/median of {args.repeats}"
    )
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    blas = [f"{key}={os.environ[key]}" for key in sorted(os.environ) if key.startswith("OPENBLAS")]
    print(
        f"numpy {np.__version__}, flwr {flwr.__version__}, usable CPUs {cpus}, "
        f"fedvc CHUNK {CHUNK}; {', '.join(blas) or 'no OPENBLAS_* set'}"
    )

    # The same arrays feed every method; Flower's serialized forms share one set of bytes.
    updates = [
        Update(model, weight=float(n), client=f"client-{i:04d}")
        for i, (model, n) in enumerate(zip(models, examples, strict=True))
    ]
    ndarray_results = [([m[k] for k in names], n) for m, n in zip(models, examples, strict=True)]
    blobs = [[npy_bytes(m[k]) for k in names] for m in models]
    status = Status(code=Code.OK, message="")
    fit_results = [
        (cast(ClientProxy, None), FitRes(status, Parameters(b, "numpy.ndarray"), n, {}))
        for b, n in zip(blobs, examples, strict=True)
    ]
    records = [
        RecordDict(
            {
                "arrays": ArrayRecord(
                    {
                        k: Array(str(m[k].dtype), tuple(m[k].shape), "numpy.ndarray", data)
                        for k, data in zip(names, b, strict=True)
                    }
                ),
                "metrics": MetricRecord({"num-examples": n}),
            }
        )
        for m, b, n in zip(models, blobs, examples, strict=True)
    ]

    strategy = fedavg()
    accumulate = strategy.accumulate
    assert accumulate is not None

    def fedvc_batch() -> dict[str, np.ndarray]:
        return strategy.merge(None, updates, {})[0]

    def fedvc_stream() -> dict[str, np.ndarray]:
        accumulator = accumulate(None, {})
        for update in updates:
            accumulator.add(update)
        return accumulator.finish()[0]

    def by_name(result: dict[str, np.ndarray]) -> list[np.ndarray]:
        return [result[k] for k in names]

    def as_list(result: list[np.ndarray]) -> list[np.ndarray]:
        return result

    def from_record(record: ArrayRecord) -> list[np.ndarray]:
        return [record[k].numpy() for k in names]

    methods = [
        Method("fedvc fedavg().merge", fedvc_batch, by_name),
        Method("fedvc fedavg().accumulate", fedvc_stream, by_name),
        Method("flwr aggregate_inplace", lambda: aggregate_inplace(fit_results), as_list),
        Method("flwr aggregate", lambda: aggregate(ndarray_results), as_list),
        Method(
            "flwr aggregate_arrayrecords",
            lambda: aggregate_arrayrecords(records, "num-examples"),
            from_record,
        ),
    ]
    print("measuring (methods interleaved in every round):", flush=True)
    add_s, times = measure(methods, np_add_timer(args.params), args.repeats)
    print("  peak memory: one more run of each under tracemalloc", flush=True)
    rows = []
    for method in methods:
        result, peak = traced_peak(method.action)
        rows.append(Row(method.name, times[method.name], peak, method.to_list(result)))
        del result
    fedvc_rows, flower_rows = rows[:2], rows[2:]
    fastest_flower = min(flower_rows, key=lambda row: row.best)

    add_bw = 3 * model_bytes / add_s
    add_read_bw = 2 * model_bytes / add_s
    print()
    print(
        f"np.add(a, b, out=c) on {args.params:,} float32: {add_s * 1e3:.2f} ms -> "
        f"{add_bw / GB:.2f} GB/s moved (2 reads + 1 write), {add_read_bw / GB:.2f} GB/s read"
    )
    print()
    header = (
        f"{'method':<29}{'best s':>8}{'median s':>10}{'upd GB/s':>10}{'%add rd':>9}"
        f"{'=npadd/upd':>11}{'peak xM':>9}{'fedvc x':>9}"
    )
    print(header)
    print("-" * len(header))
    fedvc_best = min(row.best for row in fedvc_rows)
    for row in rows:
        read_bw = update_bytes / row.best
        print(
            f"{row.name:<29}{row.best:>8.3f}{row.median:>10.3f}{read_bw / GB:>10.2f}"
            f"{read_bw / add_read_bw:>9.0%}{args.clients * add_s / row.best:>11.0%}"
            f"{row.peak / model_bytes:>9.2f}{row.best / fedvc_best:>9.2f}"
        )
    print(
        "  upd GB/s: update bytes read / best time; %add rd: that / np.add read bandwidth;\n"
        "  =npadd/upd: clients x np.add time / best time (1 = each update costs one np.add);\n"
        "  peak xM: tracemalloc peak during one run, result included, / one model's bytes;\n"
        "  fedvc x: best time / fedvc's best time (flwr rows: how many times fedvc is faster)"
    )
    print("  flwr aggregate_inplace = FedAvg.aggregate_fit's default (inplace=True), timed with")
    print("  its deserialization of Parameters bytes; flwr aggregate = inplace=False, given")
    print("  ndarrays; aggregate_arrayrecords = serverapp FedAvg.aggregate_train (deserializes).")

    print()
    print("results agree (fedvc batch vs ...):")
    reference = fedvc_rows[0].result
    same_bits = all(
        np.array_equal(a, b) for a, b in zip(reference, fedvc_rows[1].result, strict=True)
    )
    print(f"  fedvc streaming: bit-identical {same_bits}")
    agree = same_bits
    for row in flower_rows:
        diff, close = max_abs_diff(reference, row.result)
        agree = agree and close
        print(f"  {row.name:<28} max abs diff {diff:.2e}  within rtol 1e-5 / atol 1e-6: {close}")

    print()
    print("targets (fedvc's slower path counts):")
    slowest = max(fedvc_rows, key=lambda row: row.best)
    biggest = max(fedvc_rows, key=lambda row: row.peak)
    speedup = fastest_flower.best / slowest.best
    inplace_speedup = flower_rows[0].best / slowest.best
    share = update_bytes / slowest.best / add_read_bw
    memory = biggest.peak / model_bytes
    checks = [
        (
            f"speed >= {SPEED_TARGET:.0f}x fastest Flower ({fastest_flower.name}): {speedup:.2f}x "
            f"(vs aggregate_fit's default aggregate_inplace: {inplace_speedup:.2f}x)",
            speedup >= SPEED_TARGET,
        ),
        (
            f"update read bandwidth >= {BANDWIDTH_TARGET:.0%} of np.add's: {share:.0%} "
            f"({slowest.name})",
            share >= BANDWIDTH_TARGET,
        ),
        (
            f"peak extra memory <= {MEMORY_TARGET:.0f}x model: {memory:.2f}x ({biggest.name})",
            memory <= MEMORY_TARGET,
        ),
        ("result equals Flower's within float32 tolerance", agree),
    ]
    for text, ok in checks:
        print(f"  [{'PASS' if ok else 'MISS'}] {text}")


if __name__ == "__main__":
    main()
