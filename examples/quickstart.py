"""fedvc in two minutes: train, branch, merge, audit.

Run: python examples/quickstart.py [--dir quickstart-repo] [--epochs 3] [--clients 3]

1. A coordinator trains a digits classifier for a few epochs, committing every epoch
   signed, with its metrics.
2. One federated round as a branch-and-merge: each client branches from the base commit,
   trains on its own label-skewed share of the data (Dirichlet alpha=0.5), and commits its
   update signed with its own key. The coordinator merges the updates with FedAvg
   (``fedvc merge``): one octopus merge commit whose parents are the base and every update.
3. The history is audited: ``log --graph``, ``diff --interference``, ``verify --trust``.

Everything is local: scikit-learn's bundled digits, a fresh repository, fresh keys.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import torch
from fedvc_client.training import TrainConfig, evaluate, train
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from fedvc import Repository, SigningKey, cli
from fedvc.simulation import dirichlet
from fedvc.torch_io import load_into_module


def build_model() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=Path("quickstart-repo"))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--clients", type=int, default=3)
    args = parser.parse_args()

    torch.manual_seed(0)
    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        (x / 16.0).astype(np.float32), y, test_size=0.25, random_state=0, stratify=y
    )
    shutil.rmtree(args.dir, ignore_errors=True)
    repo = Repository.init(args.dir)
    coordinator = SigningKey.generate()
    coordinator.save(args.dir / "coordinator.key")
    print(f"repository {args.dir}/.fedvc, coordinator key {coordinator.key_id}")

    print("\n1. centralised warm-up, one signed commit per epoch")
    model = build_model()
    repo.commit_params(model.state_dict(), "initial weights", signer=coordinator)
    for epoch in range(1, args.epochs + 1):
        train(model, x_train, y_train, TrainConfig(epochs=1, lr=0.05, seed=epoch))
        accuracy, loss = evaluate(model, x_test, y_test)
        metrics = {"epoch": epoch, "accuracy": round(accuracy, 4), "loss": round(loss, 4)}
        repo.commit_params(
            model.state_dict(), f"epoch {epoch}", signer=coordinator, metadata=metrics
        )
        print(f"   epoch {epoch}/{args.epochs}: test accuracy {accuracy:.3f}, loss {loss:.3f}")

    print(f"\n2. one federated round: {args.clients} clients branch from main and train")
    base_id = repo.resolve("main")
    base = repo.read_params(base_id)
    updates, sizes = [], []
    for client, rows in enumerate(dirichlet(y_train, args.clients, alpha=0.5, seed=0)):
        key = SigningKey.generate()
        key.save(args.dir / f"client{client}.key")
        local = build_model()
        load_into_module(local, base)
        train(local, x_train[rows], y_train[rows], TrainConfig(epochs=3, lr=0.05, seed=client))
        accuracy, _ = evaluate(local, x_test, y_test)
        snapshot = repo.write_snapshot(local.state_dict())
        metadata = {"client": client, "examples": len(rows), "accuracy": round(accuracy, 4)}
        updates.append(
            repo.write_commit(
                snapshot,
                parents=[base_id],
                message=f"client {client} update",
                metadata=metadata,
                signer=key,
            )
        )
        sizes.append(str(len(rows)))
        per_class = np.bincount(y_train[rows], minlength=10).tolist()
        print(
            f"   client {client}: {len(rows)} examples {per_class}, alone: test accuracy {accuracy:.3f}"
        )

    store = str(args.dir)
    steps = [
        [
            "merge",
            "--strategy",
            "fedavg",
            "--base",
            "main",
            *updates,
            "--weights",
            ",".join(sizes),
            "-o",
            str(args.dir / "merged.safetensors"),
            "--key",
            str(args.dir / "coordinator.key"),
            "-m",
            "round 1: FedAvg of client updates",
        ],
        ["log", "--graph"],
        [
            "diff",
            "--interference",
            "--base",
            "HEAD^1",
            *(f"HEAD^{i + 2}" for i in range(args.clients)),
        ],
        ["verify", "--trust", str(args.dir)],
    ]
    for command in steps:
        shown = [c[:12] if len(c) == 64 else c for c in command]  # short commit ids
        print(f"\n$ fedvc --repo {store} {' '.join(shown)}")
        if cli.main(["--repo", store, *command]) != 0:
            raise SystemExit(f"fedvc {command[0]} failed: see the message above")
    merged = build_model()
    load_into_module(merged, repo.read_params("HEAD"))
    print(f"\nmerged model (HEAD): test accuracy {evaluate(merged, x_test, y_test)[0]:.3f}")


if __name__ == "__main__":
    main()
