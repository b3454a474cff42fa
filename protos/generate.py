"""Regenerate fedvc's protobuf and gRPC code from the .proto sources in this folder.

Run it with a Python that has ``grpcio-tools`` (any version up to 1.80: later ones need
protobuf 7, which the project cannot use next to Flower); install that in a throwaway
virtual environment, never in the project's own::

    python -m venv /tmp/gen && /tmp/gen/bin/pip install "grpcio-tools<=1.80"
    /tmp/gen/bin/python protos/generate.py

The generated modules are committed under ``fedvc/proto/v1/``; ``tests/test_protos.py``
regenerates them into a temporary folder and checks that nothing changed. Why commit
generated code at all: the runtime packages (fedvc, fedvc-server, fedvc-client) then
need only ``protobuf`` and ``grpcio``, never the compiler.

The .proto files sit under ``protos/fedvc/proto/v1/`` so that ``-I protos`` makes protoc
name them ``fedvc/proto/v1/*.proto`` and write imports as ``from fedvc.proto.v1 import``;
``fix_imports`` enforces that form in case a source is ever compiled from elsewhere.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

PROTOS = Path(__file__).resolve().parent
ROOT = PROTOS.parent
PACKAGE = "fedvc.proto.v1"
SOURCES = ("fedvc/proto/v1/fleet.proto",)
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")

_BARE_IMPORT = re.compile(r"^import (\w+_pb2) as (\w+)$", re.MULTILINE)
MYPY_HEADER = "# mypy: ignore-errors\n"
"""Generated code is not ours to type-check, but mypy follows imports into it whatever
``exclude`` says; this inline setting keeps its findings out of the project's report."""


def fix_imports(text: str) -> str:
    """Turn protoc's bare ``import x_pb2 as y`` into ``from fedvc.proto.v1 import x_pb2 as y``."""
    return _BARE_IMPORT.sub(rf"from {PACKAGE} import \1 as \2", text)


def postprocess(text: str) -> str:
    """What ``generate`` does to protoc's output: package imports, the mypy header."""
    text = fix_imports(text)
    return text if text.startswith(MYPY_HEADER) else MYPY_HEADER + text


def generated_files(out: Path) -> list[Path]:
    """The files ``generate`` writes under ``out``, in a stable order."""
    return sorted(
        out / Path(source).parent / (Path(source).stem + suffix)
        for source in SOURCES
        for suffix in GENERATED_SUFFIXES
    )


def generate(out: Path) -> list[Path]:
    """Compile every source into ``out`` (the repository root by default); return the files."""
    command = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{PROTOS}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--pyi_out={out}",
        *SOURCES,
    ]
    result = subprocess.run(command, cwd=PROTOS, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"protoc failed ({result.returncode}):\n{result.stderr}")
    files = generated_files(out)
    for path in files:
        path.write_text(postprocess(path.read_text()))
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT, help="output root (default: repo)")
    args = parser.parse_args(argv)
    try:
        import grpc_tools  # noqa: F401
    except ImportError:
        print(
            "grpc_tools is not importable: run this with a Python that has "
            '"grpcio-tools<=1.80" installed (see this file\'s docstring)',
            file=sys.stderr,
        )
        return 2
    for path in generate(args.out):
        print(path.relative_to(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
