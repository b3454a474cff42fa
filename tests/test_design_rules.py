"""DESIGN.md's import rules, enforced: one heavy dependency, one module.

Each rule names the only places allowed to import a package. The test parses every source
file (no imports are executed), so a violation anywhere fails with the file and line.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "fedvc"
SOURCES = [
    path
    for top in (CORE, ROOT / "server" / "fedvc_server", ROOT / "client" / "fedvc_client")
    for path in sorted(top.rglob("*.py"))
    if not path.name.endswith(("_pb2.py", "_pb2_grpc.py"))
]

# package -> the files or folders (relative to the repository root) that may import it
ALLOWED = {
    "torch": ["fedvc/torch_io.py", "client/fedvc_client"],
    "scipy": ["fedvc/align"],
    "cryptography": ["fedvc/signing.py"],
    "flwr": ["fedvc/compat/flower.py", "fedvc/compat/flower_client.py"],
    "google.protobuf": ["fedvc/wire.py", "fedvc/proto"],
    "grpc": ["server/fedvc_server", "client/fedvc_client", "fedvc/proto"],
    "prometheus_client": ["server/fedvc_server"],
    "matplotlib": ["fedvc/plots.py"],
}


def imported_modules(path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, node.lineno))
    return found


def allowed(path: Path, package: str) -> bool:
    relative = path.relative_to(ROOT).as_posix()
    return any(relative == place or relative.startswith(place + "/") for place in ALLOWED[package])


def test_sources_are_found() -> None:
    assert CORE / "repo.py" in SOURCES and len(SOURCES) > 10


def test_a_violation_would_be_seen(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text(
        "import torch.nn as nn\nfrom cryptography.x509 import load_pem_x509_certificate\n"
    )
    assert imported_modules(module) == [("torch.nn", 1), ("cryptography.x509", 2)]
    assert not allowed(CORE / "repo.py", "torch") and allowed(CORE / "torch_io.py", "torch")


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_heavy_dependency_stays_in_its_module(package: str) -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in SOURCES
        for module, line in imported_modules(path)
        if (module == package or module.startswith(package + ".")) and not allowed(path, package)
    ]
    assert not offenders, f"only {ALLOWED[package]} may import {package}:\n" + "\n".join(offenders)


def test_core_never_reads_the_environment_or_prints() -> None:
    offenders = []
    for path in SOURCES:
        if not path.is_relative_to(CORE) or path.is_relative_to(CORE / "cli"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in {"environ", "getenv"}:
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} reads os.{node.attr}")
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print":
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} prints")
    assert not offenders, "\n".join(offenders)


def test_nothing_unpickles() -> None:
    banned = {"pickle", "dill", "cloudpickle", "joblib"}
    offenders = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in SOURCES
        for module, line in imported_modules(path)
        if module.split(".")[0] in banned
    ]
    for path in SOURCES:
        text = path.read_text()
        if "torch.load(" in text or "allow_pickle=True" in text:
            offenders.append(f"{path.relative_to(ROOT)} calls torch.load or allows pickles")
    assert not offenders, "\n".join(offenders)
