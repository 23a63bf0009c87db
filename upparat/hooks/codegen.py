"""Regenerates the committed Python code of the hook contract from hooks.proto.

Owns the one protoc invocation (grpcio-tools + mypy-protobuf, both pinned) and the
freshness check CI runs. Development-time only: the daemon never imports this module.

    python -m upparat.hooks.codegen --out upparat/hooks/v1     # regenerate
    python -m upparat.hooks.codegen --check upparat/hooks/v1   # exit 1 if stale
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PROTO_ROOT = REPO_ROOT / "proto"
# Relative to PROTO_ROOT. protoc derives the Python module path from it, so the
# generated grpc module imports `from upparat.hooks.v1 import hooks_pb2`.
PROTO_FILES = ("upparat/hooks/v1/hooks.proto",)
PACKAGE_DIR = Path("upparat/hooks/v1")
# Every file protoc writes for PROTO_FILES; `--check` also flags strays named like these.
GENERATED_GLOB = "*_pb2*.py*"

# only_sync: the daemon and the Python hook servers use the synchronous gRPC API
# (grpc.server with a thread pool). With async stubs too, servicer methods take a Union
# of both context types, and a typed servicer declaring grpc.ServicerContext fails
# mypy's override check.
# generate_concrete_servicer_stubs: every HookService RPC is optional, and the runtime
# servicer base answers UNIMPLEMENTED for the ones not overridden. Abstract stubs would
# make mypy refuse to instantiate a servicer that implements only some hooks.
MYPY_GRPC_OPTIONS = "only_sync,generate_concrete_servicer_stubs"


class CodegenError(Exception):
    """A tool is missing or protoc failed; the message says what to do."""


def _plugin(name: str) -> Path:
    # The venv's bin dir first: `.venv/bin/python -m ...` does not put it on PATH.
    beside_python = Path(sys.executable).parent / name
    if beside_python.is_file():
        return beside_python
    found = shutil.which(name)
    if found is None:
        raise CodegenError(
            f"codegen: protoc plugin {name} not found next to {sys.executable} or on PATH;"
            " it comes with mypy-protobuf: run `make venv`"
        )
    return Path(found)


def _well_known_protos() -> Path:
    # grpcio-tools bundles google/protobuf/*.proto (duration.proto) in grpc_tools/_proto.
    spec = importlib.util.find_spec("grpc_tools")
    if spec is None or not spec.submodule_search_locations:
        raise CodegenError("codegen: grpcio-tools is not installed: run `make venv`")
    return Path(spec.submodule_search_locations[0]) / "_proto"


def generate_into(out_root: Path) -> list[Path]:
    """Run protoc writing under out_root; return the generated files of PACKAGE_DIR."""
    args = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
        f"-I{PROTO_ROOT}",
        f"-I{_well_known_protos()}",
        f"--python_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--mypy_out={out_root}",
        f"--mypy_grpc_out={MYPY_GRPC_OPTIONS}:{out_root}",
        *PROTO_FILES,
    ]
    done = subprocess.run(args, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise CodegenError(
            f"codegen: protoc failed (exit {done.returncode}):\n{done.stderr.strip()}"
        )
    return sorted((out_root / PACKAGE_DIR).glob(GENERATED_GLOB))


def write(out_dir: Path) -> None:
    """Regenerate the code into out_dir (the upparat/hooks/v1 package directory)."""
    with tempfile.TemporaryDirectory(prefix="upparat-codegen-") as tmp:
        fresh = generate_into(Path(tmp))
        fresh_names = {path.name for path in fresh}
        out_dir.mkdir(parents=True, exist_ok=True)
        for stale in out_dir.glob(GENERATED_GLOB):
            if stale.name not in fresh_names:
                stale.unlink()
        for path in fresh:
            shutil.copyfile(path, out_dir / path.name)
            print(f"codegen: wrote {out_dir / path.name}")


def differences(committed_dir: Path) -> list[str]:
    """Names of the files in committed_dir that differ from a fresh generation."""
    with tempfile.TemporaryDirectory(prefix="upparat-codegen-") as tmp:
        fresh = {path.name: path.read_bytes() for path in generate_into(Path(tmp))}
    committed = {path.name: path.read_bytes() for path in committed_dir.glob(GENERATED_GLOB)}
    problems = []
    for name in sorted(fresh.keys() | committed.keys()):
        if name not in committed:
            problems.append(f"{name} (missing)")
        elif name not in fresh:
            problems.append(f"{name} (not generated from any .proto)")
        elif fresh[name] != committed[name]:
            problems.append(f"{name} (differs)")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m upparat.hooks.codegen",
        description="Generate the Python gRPC code of proto/upparat/hooks/v1/hooks.proto.",
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--out", type=Path, metavar="DIR", help="write the generated files to DIR")
    mode.add_argument(
        "--check",
        type=Path,
        metavar="DIR",
        help="exit 1 if the files in DIR differ from a fresh generation",
    )
    options = parser.parse_args(argv)
    try:
        if options.out is not None:
            write(options.out)
            return 0
        problems = differences(options.check)
    except CodegenError as error:
        print(error, file=sys.stderr)
        return 2
    if problems:
        print(f"codegen: generated code in {options.check} is stale:", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        print(
            "codegen: hooks.proto and the committed code disagree: run `make generate`",
            file=sys.stderr,
        )
        return 1
    print(f"codegen: {options.check} is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
