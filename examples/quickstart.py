"""Train a small digits classifier, commit every epoch signed, then audit the history.

Run: python examples/quickstart.py [--dir quickstart-repo] [--epochs 5]

Everything is local: scikit-learn's bundled digits, a fresh repository, a fresh key.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from fedvc import Repository, SigningKey, cli


def build_model() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=Path("quickstart-repo"))
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()

    torch.manual_seed(0)
    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        (x / 16.0).astype(np.float32), y, test_size=0.25, random_state=0, stratify=y
    )
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
    xv, yv = torch.from_numpy(x_test), torch.from_numpy(y_test)

    shutil.rmtree(args.dir, ignore_errors=True)
    repo = Repository.init(args.dir)
    key = SigningKey.generate()
    key.save(args.dir / "trainer.key")
    print(f"repository {args.dir}/.fedvc, signing key {key.key_id}")

    model = build_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    repo.commit_params(model.state_dict(), "initial weights", signer=key, metadata={"seed": 0})
    for epoch in range(1, args.epochs + 1):
        model.train()
        for batch in torch.randperm(len(xt)).split(64):
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(xt[batch]), yt[batch])
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            logits = model(xv)
            accuracy = float((logits.argmax(1) == yv).float().mean())
            test_loss = float(torch.nn.functional.cross_entropy(logits, yv))
        metrics = {"epoch": epoch, "accuracy": round(accuracy, 4), "loss": round(test_loss, 4)}
        repo.commit_params(
            model.state_dict(), f"epoch {epoch}", signer=key, metadata={"lr": 0.1, **metrics}
        )
        print(f"epoch {epoch}/{args.epochs}: test accuracy {accuracy:.3f}, loss {test_loss:.3f}")
    repo.create_tag("best", "HEAD")

    store = str(args.dir)
    for command in (
        ["log", "--graph"],
        ["diff", f"HEAD~{args.epochs - 1}", "HEAD"],
        ["verify", "--trust", str(args.dir / "trainer.key.pub")],
    ):
        print(f"\n$ fedvc --repo {store} {' '.join(command)}")
        cli.main(["--repo", store, *command])


if __name__ == "__main__":
    main()
