"""Weight-matching speed: the cost of aligning two models before merging them.

Prints, for random float32 models (independent draws, so matching has real work to do
rather than undoing a known permutation):
- an MLP 64 → 512 → 512 → 512 → 10 (three permutations of size 512), target < 0.5 s;
- one 4096-wide hidden layer between 4096-wide input and output (a single permutation of
  size 4096: two 4096 x 4096 products and one 4096 x 4096 assignment), target < 30 s;
each timed over a few runs (best and median), with the distance before and after.

Usage: python bench/align.py [--repeats 5] [--wide-repeats 2] [--skip-wide]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time

import numpy as np

from fedvc.align import (
    PermutationSpec,
    apply_permutation,
    infer_spec,
    l2_distance,
    weight_matching,
)


def random_mlp(widths: list[int], seed: int) -> dict[str, np.ndarray]:
    """A Linear chain with PyTorch-like default scale (uniform ±1/√fan_in), float32."""
    rng = np.random.default_rng(seed)
    params: dict[str, np.ndarray] = {}
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(widths)):
        bound = 1.0 / np.sqrt(fan_in)
        params[f"layers.{i}.weight"] = rng.uniform(-bound, bound, (fan_out, fan_in)).astype(
            np.float32
        )
        params[f"layers.{i}.bias"] = rng.uniform(-bound, bound, fan_out).astype(np.float32)
    return params


def bench(name: str, widths: list[int], repeats: int, target: float) -> None:
    a, b = random_mlp(widths, seed=1), random_mlp(widths, seed=2)
    spec: PermutationSpec = infer_spec(a)
    times: list[float] = []
    perms: dict[str, np.ndarray] = {}
    for _ in range(repeats):
        start = time.perf_counter()
        perms = weight_matching(spec, a, b, seed=0)
        times.append(time.perf_counter() - start)
    before, after = l2_distance(a, b), l2_distance(a, apply_permutation(spec, perms, b))
    sizes = ", ".join(f"{p}={n}" for p, n in spec.check(a).items())
    print(f"{name}: permutations {sizes}")
    print(
        f"  weight_matching best {min(times):.3f} s, median {statistics.median(times):.3f} s "
        f"over {repeats} run(s) (target < {target:g} s)"
    )
    print(f"  L2 distance {before:.2f} -> {after:.2f} after alignment")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs of the MLP (default 5)")
    parser.add_argument(
        "--wide-repeats", type=int, default=2, help="runs of the 4096-wide layer (default 2)"
    )
    parser.add_argument("--skip-wide", action="store_true", help="skip the 4096-wide layer")
    args = parser.parse_args()
    bench("MLP 64-512-512-512-10", [64, 512, 512, 512, 10], args.repeats, 0.5)
    if not args.skip_wide:
        bench("4096-wide layer pair", [4096, 4096, 4096], args.wide_repeats, 30.0)


if __name__ == "__main__":
    main()
