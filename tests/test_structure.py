"""The code's shape: the README's map of the modules holds, the security core and the
parsers load no web framework, imports run downward only, with no cycle, the optional
parts load only when enabled, and the formatter, the linter and the strict type check
pass."""

from __future__ import annotations

import ast
import graphlib
import os
import re
import subprocess
import sys

import httpx
import pytest
from conftest import NOWHERE, ROOT, eventually
from fake_upstream import free_port

PACKAGE = ROOT / "draco"
WEB = {"starlette", "hypercorn", "httpx"}
README = (ROOT / "README.md").read_text()
MAP_ROW = re.compile(r"^\| `(?P<module>[a-z_/]+\.py)` \| (?P<lines>\d+) \| (?P<may>[^|]*) \|")


def module_map() -> dict[str, tuple[int, str]]:
    """The README's map of the code: {draco.module: (its lines, what it may import)}."""
    rows = {}
    for line in README.splitlines():
        if found := MAP_ROW.match(line):
            name = "draco." + found["module"].removesuffix(".py").replace("/", ".")
            rows[name.removesuffix(".__init__")] = (int(found["lines"]), found["may"])
    return rows


def modules() -> dict[str, set[str]]:
    """Every module of draco and the modules it imports, anywhere in its code."""
    paths = {
        ".".join(("draco", *p.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(
            ".__init__"
        ): p
        for p in PACKAGE.rglob("*.py")
    }
    graph = {}
    for name, path in paths.items():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
            elif (
                isinstance(node, ast.ImportFrom) and node.module
            ):  # `from draco.x import y`: module x.y, or x
                imported |= {
                    f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in paths else node.module
                    for a in node.names
                }
        graph[name] = imported
    return graph


def part(module: str) -> str:
    return module.split(".")[1] if module.count(".") else "draco"


def test_the_readme_maps_every_module_with_its_size():
    graph = modules()
    rows = module_map()
    assert set(rows) == set(graph), "the README's map and draco/ list different modules"
    for module, (lines, _) in rows.items():
        path = PACKAGE.joinpath(*module.split(".")[1:])
        path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        actual = len(path.read_text().splitlines())
        assert abs(actual - lines) <= max(10, actual // 10), (
            f"{module}: {actual} lines, not {lines}"
        )


def test_every_module_imports_only_what_the_readme_says_it_may():
    """The map's may-import column, held against the code: draco's parts a module uses
    (its own part always), and, for a module of the standard library alone, every other
    package it loads."""
    graph = modules()
    for module, (_, may) in module_map().items():
        named = set(re.findall(r"`([a-z_.]+)`", may))
        own = part(module)
        for target in graph[module]:
            top = target.split(".")[0]
            if target.startswith("draco.") and target in graph:
                assert part(target) in named | {own}, f"{module} imports {target}: {may}"
            elif top != "draco" and "standard library" in may:
                assert top in sys.stdlib_module_names | named, f"{module} imports {target}"


def test_there_is_no_import_cycle():
    graph = modules()
    own = {
        module: {target for target in imported if target in graph}
        for module, imported in graph.items()
    }
    tuple(graphlib.TopologicalSorter(own).static_order())  # raises CycleError naming the cycle


@pytest.mark.parametrize(
    "imported",
    [
        "draco.security.address, draco.security.limiter, draco.security.keys, "
        "draco.security.redis_store",
        "draco.providers",
    ],
)
def test_the_security_core_and_the_parsers_load_no_web_framework(imported):
    check = (
        f"import sys, {imported}; print(sorted({{m.split('.')[0] for m in sys.modules}} & {WEB!r}))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert loaded.stdout.strip() == "[]"


def test_the_strict_type_check_passes():
    result = subprocess.run(
        [sys.executable, "-m", "mypy"], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success: no issues found" in result.stdout


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT)


def test_the_formatter_owns_the_layout():
    result = _run(sys.executable, "-m", "ruff", "format", "--check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_linter_passes():
    result = _run(sys.executable, "-m", "ruff", "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_nothing_opts_out_of_the_formatter():
    marker = re.compile(r"fmt: *(skip|off)")
    scripts = [path for path in ROOT.glob("scripts/*") if path.is_file()]  # not __pycache__
    for path in [*ROOT.glob("draco/**/*.py"), *ROOT.glob("tests/*.py"), *scripts]:
        assert not marker.search(path.read_text(errors="replace")), path


def test_every_security_noqa_says_why():
    for path in ROOT.glob("draco/**/*.py"):
        for line in path.read_text().splitlines():
            if "noqa: S" in line:
                assert re.search(r"noqa: S\d+ - \S", line), f"{path}: {line.strip()}"


OPTIONAL = ("redis", "prometheus_client", "openapi_ui_bundles", "aioquic")


def test_with_default_settings_serve_loads_no_optional_part(tmp_path):
    """`python -X importtime -m draco serve`: every module the process imported, up to
    serving, is on stderr; none of the extras' is among them."""
    env = {**os.environ, **NOWHERE, "PYTHONPATH": str(ROOT)}
    for name in ("RATE_LIMIT_STORAGE", "CATALOG_STORAGE", "METRICS_ENABLED", "DEBUG"):
        env.pop(name, None)
    port = free_port()
    log = tmp_path / "importtime.log"
    with log.open("w") as stderr:
        command = [sys.executable, "-X", "importtime", "-m", "draco", "serve"]
        process = subprocess.Popen(
            [*command, "--bind", f"127.0.0.1:{port}"], env=env, stderr=stderr
        )
        try:
            assert eventually(lambda: _answers(f"http://127.0.0.1:{port}/health"), 20)
        finally:
            process.terminate()
            process.wait(10)
    imported = {line.split("|")[-1].strip().split(".")[0] for line in log.read_text().splitlines()}
    assert "starlette" in imported  # the log is what it should be
    assert not imported & set(OPTIONAL)


def _answers(url: str) -> bool:
    try:
        httpx.get(url, timeout=0.5)  # 200, or 503 with every upstream out of reach
    except httpx.TransportError:
        return False
    return True


HIDE = """
import importlib.util, os
_find = importlib.util.find_spec
hidden = set(os.environ["DRACO_TEST_HIDE"].split(","))
importlib.util.find_spec = lambda name, *a: None if name in hidden else _find(name, *a)
"""


def _without_extras(tmp_path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m draco ARGS` with every extra hidden from the import system, as if it were
    not installed."""
    (tmp_path / "sitecustomize.py").write_text(HIDE)
    path = f"{tmp_path}{os.pathsep}{ROOT}"
    hidden = ",".join(OPTIONAL)
    env = {**os.environ, **NOWHERE, **env, "PYTHONPATH": path, "DRACO_TEST_HIDE": hidden}
    command = [sys.executable, "-m", "draco", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)


@pytest.mark.parametrize(
    ("variable", "value", "extra"),
    [
        ("CATALOG_STORAGE", "redis://127.0.0.1:9/0", "redis"),
        ("RATE_LIMIT_STORAGE", "redis://127.0.0.1:9/0", "redis"),
        ("METRICS_ENABLED", "true", "metrics"),
    ],
)
@pytest.mark.parametrize("command", ["serve", "check"])
def test_a_setting_that_needs_a_missing_extra_stops_start_up_naming_it(
    tmp_path, variable, value, extra, command
):
    result = _without_extras(tmp_path, {variable: value}, command)
    assert result.returncode == 2, result.stdout + result.stderr
    line = f"draco: configuration error: {variable}: needs the {extra} extra: "
    assert f"{line}pip install 'draco[{extra}]'" in result.stderr.splitlines()


def test_http3_without_its_extra_stops_start_up_naming_it(tmp_path):
    tls = ("--certfile", __file__, "--keyfile", __file__)
    result = _without_extras(tmp_path, {}, "serve", "--quic-bind", "127.0.0.1:8443", *tls)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "--quic-bind: needs the h3 extra: pip install 'draco[h3]'" in result.stderr
