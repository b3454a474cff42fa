"""Store throughput: commit and checkout of a large model beside raw hashing and writing.

Prints, from one run on one machine (so the figures are comparable):
- raw SHA-256 and raw file write (+fsync) throughput over the same bytes,
- the serial raw figure a commit cannot beat without overlap (hash, then write),
- commit (``Repository.commit_params`` to a fresh disk repository) and checkout
  (``read_params`` with hash verification + a safetensors file written and fsynced),
- how many bytes a second commit adds when 10% of the tensors changed.

Usage: python bench/store.py [--mb 500] [--dir DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fedvc.repo import Repository
from fedvc.tensor_files import save_params
from fedvc.tensors import tensor_bytes

MB = 1 << 20


def make_model(total_mb: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A transformer-shaped float32 model: a few large matrices and many small vectors."""
    rng = np.random.default_rng(seed)
    params: dict[str, np.ndarray] = {}
    layer = 0
    remaining = total_mb * MB // 4
    while remaining > 0:
        width = 1024
        rows = min(max(remaining // width, 1), width)
        params[f"layers.{layer}.weight"] = rng.standard_normal((rows, width), dtype=np.float32)
        params[f"layers.{layer}.bias"] = rng.standard_normal(rows, dtype=np.float32)
        params[f"layers.{layer}.norm"] = np.ones(width, dtype=np.float32)
        remaining -= rows * width + rows + width
        layer += 1
    return params


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def raw_hash(params: dict[str, np.ndarray]) -> None:
    for array in params.values():
        hashlib.sha256(tensor_bytes(array)).digest()


def raw_write(params: dict[str, np.ndarray], directory: Path) -> None:
    directory.mkdir()
    for name, array in params.items():
        with open(directory / name, "wb") as file:
            file.write(tensor_bytes(array))
            file.flush()
            os.fsync(file.fileno())


def directory_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=500, help="model size in MiB (default 500)")
    parser.add_argument("--dir", type=Path, default=None, help="scratch directory (default: temp)")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="fedvc-bench-", dir=args.dir))
    try:
        params = make_model(args.mb)
        size = sum(a.nbytes for a in params.values())
        print(f"model: {len(params)} tensors, {size / MB:.0f} MiB float32")

        hash_s = timed(lambda: raw_hash(params))
        write_s = timed(lambda: raw_write(params, scratch / "raw"))
        shutil.rmtree(scratch / "raw")
        serial_s = hash_s + write_s

        repo = Repository.init(scratch / "repo")
        commit_s = timed(lambda: repo.commit_params(params, "bench"))
        out = scratch / "out.safetensors"
        checkout_s = timed(lambda: save_params(repo.read_params("HEAD"), out))
        read_s = timed(lambda: [a.sum() for a in repo.read_params("HEAD").values()])

        objects = repo.path / "objects" if repo.path else scratch
        before = directory_bytes(objects)
        changed = dict(params)  # every tensor of every 10th layer: 10% of tensors and bytes
        for name in params:
            if int(name.split(".")[1]) % 10 == 0:
                changed[name] = params[name] + np.float32(1e-3)
        changed_names = [n for n in params if changed[n] is not params[n]]
        changed_bytes = sum(params[n].nbytes for n in changed_names)
        repo.commit_params(changed, "10% of tensors changed")
        added = directory_bytes(objects) - before

        def rate(seconds: float) -> str:
            return f"{size / MB / seconds:8.0f} MiB/s"

        print(f"raw sha256             {rate(hash_s)}")
        print(f"raw write + fsync      {rate(write_s)}")
        print(f"raw hash then write    {rate(serial_s)}   (the raw figure)")
        print(f"commit                 {rate(commit_s)}   {serial_s / commit_s:6.0%} of raw")
        print(f"checkout (verify+write){rate(checkout_s)}   {serial_s / checkout_s:6.0%} of raw")
        print(f"read_params + touch    {rate(read_s)}   (hash-verified, zero-copy)")
        print(
            f"second commit, {len(changed_names)} of "
            f"{len(params)} tensors changed ({changed_bytes / size:.1%} of bytes): "
            f"adds {added / MB:.1f} MiB = {added / size:.1%} of the model"
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
