"""The core imports nothing from the drivers and no I/O module (read from the AST)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import upparat.core

CORE = Path(upparat.core.__file__).parent
FILES = sorted(CORE.glob("*.py"))

ALLOWED = {
    "__future__",
    "enum",
    "typing",
    "collections.abc",
    "attrs",
    "upparat.core",
}
"""Everything the core may import; anything else (io, os, time, logging, socket, threading,
grpc, paho, urllib, upparat.io, upparat.hooks, upparat.aws, ...) is a boundary violation."""

FORBIDDEN_EXAMPLES = [
    "io",
    "os",
    "time",
    "logging",
    "socket",
    "threading",
    "grpc",
    "paho.mqtt.client",
    "urllib",
    "urllib.parse",
    "urllib.request",
    "upparat.io.download",
    "upparat.hooks",
    "upparat.aws.inbound",
    "upparat.runtime",
]


def allowed(module: str) -> bool:
    return any(module == root or module.startswith(root + ".") for root in ALLOWED)


def resolve(node: ast.ImportFrom) -> str:
    """The absolute module of `from X import ...`, relative ones resolved from upparat.core."""
    if not node.level:
        return node.module or ""
    package = ["upparat", "core"][: max(0, 3 - node.level)]
    if node.level > 2:
        return "<relative import above the upparat package>"
    return ".".join([*package, *([node.module] if node.module else [])])


def imported_modules(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    modules: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            modules.append(resolve(node))
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            if name in {"__import__", "import_module", "exec", "eval", "open"}:
                modules.append(f"<dynamic {name}()>")
    return modules


def test_the_core_has_modules_to_check() -> None:
    names = {f.name for f in FILES}
    assert {"machine.py", "model.py", "events.py", "commands.py"} <= names


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_core_module_imports_only_pure_modules(path: Path) -> None:
    offending = [m for m in imported_modules(path) if not allowed(m)]
    assert offending == [], f"{path.name} imports {offending}"


@pytest.mark.parametrize("module", FORBIDDEN_EXAMPLES)
def test_the_check_would_catch_io_and_driver_imports(module: str) -> None:
    assert not allowed(module)


def test_the_check_sees_every_kind_of_import(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import os\nfrom time import monotonic\nfrom ..io import mqtt\nfrom . import model\n"
        "def f():\n    import logging\n    __import__('socket')\n"
    )
    found = imported_modules(sample)
    assert sorted(m for m in found if not allowed(m)) == sorted(
        ["os", "time", "upparat.io", "logging", "<dynamic __import__()>"]
    )
    assert "upparat.core" in found
