"""The code's shape: the security core and the parsers load no web framework, imports
run downward only, with no cycle, and the strict type check passes."""

from __future__ import annotations

import ast
import graphlib
import subprocess
import sys

import pytest
from conftest import ROOT

PACKAGE = ROOT / "draco"
WEB = {"starlette", "hypercorn", "httpx"}
# Which of draco's parts each part may import (besides itself and draco's version).
MAY_IMPORT = {
    "exceptions": set(),
    "models": set(),
    "security": set(),
    "probe": set(),
    "providers": {"models", "exceptions"},
    "settings": {"security", "providers"},  # the rules for API keys, the provider names
    "logs": {"settings"},
    "checklist": {"settings"},
    "catalog": {"providers", "models", "exceptions", "settings"},
    "web": {"security", "catalog", "probe", "providers", "models", "exceptions", "settings"},
    "app": {"security", "catalog", "probe", "web", "models", "settings"},
    "cli": {"app", "catalog", "checklist", "logs", "settings"},
    "__main__": {"cli"},
}
STDLIB_ONLY = {"security": {"redis"}, "probe": set()}  # the Redis store imports redis where it is used


def modules() -> dict[str, set[str]]:
    """Every module of draco and the modules it imports, anywhere in its code."""
    paths = {".".join(("draco", *p.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__"): p
             for p in PACKAGE.rglob("*.py")}  # fmt: skip
    graph = {}
    for name, path in paths.items():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:  # `from draco.x import y`: module x.y, or x
                imported |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in paths else node.module
                             for a in node.names}  # fmt: skip
        graph[name] = imported
    return graph


def part(module: str) -> str:
    return module.split(".")[1] if module.count(".") else "draco"


def test_every_part_imports_only_the_parts_below_it():
    graph = modules()
    for module, imported in graph.items():
        own = part(module)
        if own == "draco":
            continue
        for target in imported:
            if target.startswith("draco.") and target in graph:
                assert part(target) in MAY_IMPORT[own] | {own}, f"{module} imports {target}"
            top = target.split(".")[0]
            if own in STDLIB_ONLY and top != "draco":
                assert top in sys.stdlib_module_names | STDLIB_ONLY[own], f"{module} imports {target}"


def test_there_is_no_import_cycle():
    graph = modules()
    own = {module: {target for target in imported if target in graph} for module, imported in graph.items()}
    tuple(graphlib.TopologicalSorter(own).static_order())  # raises CycleError naming the cycle


@pytest.mark.parametrize(
    "imported",
    ["draco.security.address, draco.security.limiter, draco.security.keys, draco.security.redis_store",
     "draco.providers"],
)  # fmt: skip
def test_the_security_core_and_the_parsers_load_no_web_framework(imported):
    check = f"import sys, {imported}; print(sorted({{m.split('.')[0] for m in sys.modules}} & {WEB!r}))"
    loaded = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True, cwd=ROOT)
    assert loaded.stdout.strip() == "[]"


def test_the_strict_type_check_passes():
    result = subprocess.run([sys.executable, "-m", "mypy"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success: no issues found" in result.stdout
