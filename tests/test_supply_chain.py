"""What draco runs that draco did not write: locked with hashes, described by an SBOM,
licensed compatibly with BSD-3-Clause."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from conftest import ROOT
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

sys.path.insert(0, str(ROOT / "scripts"))
from sbom import IMAGE_LOCKS, install, licences, table

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
RUNTIME = [Requirement(r) for r in PROJECT["dependencies"]]
OPTIONAL = PROJECT["optional-dependencies"]
EXTRAS = {
    name: [Requirement(r) for r in OPTIONAL[name]] for name in ("redis", "metrics", "docs", "h3")
}
TEST = [Requirement(r) for r in OPTIONAL["test"] if not r.startswith("draco")]
EVERY_EXTRA = [r for extra in EXTRAS.values() for r in extra]
LOCKS = {
    "requirements.lock": RUNTIME,
    **{f"requirements-{name}.lock": RUNTIME + extra for name, extra in EXTRAS.items()},
    "requirements-test.lock": RUNTIME + EVERY_EXTRA + TEST,
}
IMAGE = RUNTIME + EXTRAS["redis"] + EXTRAS["metrics"]


def locked(name: str) -> dict[str, tuple[str, set[str]]]:
    """{package: (version, what it is required by)} from a lock file."""
    found: dict[str, tuple[str, set[str]]] = {}
    current = None
    for line in (ROOT / name).read_text().splitlines():
        if match := re.match(r"^([A-Za-z0-9._-]+)==(\S+)", line):
            current = canonicalize_name(match[1])
            found[current] = (match[2], set())
        elif current and (via := re.match(r"^\s+#\s+(?:via\s+)?(\S.*)$", line)) and via[1] != "via":
            found[current][1].add(via[1].strip())
    return found


@pytest.mark.parametrize(("lock", "required"), LOCKS.items())
def test_the_lock_matches_pyproject(lock, required):
    """Every dependency pyproject.toml declares is locked at a version it allows, and the
    lock holds nothing pyproject.toml does not ask for, directly or through another."""
    packages = locked(lock)
    for requirement in required:
        name = canonicalize_name(requirement.name)
        assert name in packages, f"{name} is not in {lock}: run scripts/lock"
        assert requirement.specifier.contains(packages[name][0], prereleases=True), (
            name,
            packages[name][0],
        )
    direct = {name for name, (_, via) in packages.items() if "draco (pyproject.toml)" in via}
    assert direct == {canonicalize_name(r.name) for r in required}, "run scripts/lock"


def test_the_locks_agree_on_every_package_they_share():
    """So any of them install together: the image installs the service's and two extras'."""
    pins: dict[str, str] = {}
    for lock in LOCKS:
        for name, (version, _) in locked(lock).items():
            assert pins.setdefault(name, version) == version, (lock, name)


def test_the_container_installs_the_locks_with_hashes_required():
    command = " ".join(install(ROOT)).replace(str(ROOT) + "/", "")
    assert f"pip {command}" in (ROOT / "Containerfile").read_text()
    for lock in LOCKS:
        blocks = (ROOT / lock).read_text().split("==")[1:]
        assert all("--hash=sha256:" in block for block in blocks), lock


def fresh(tmp_path, name: str) -> subprocess.CompletedProcess[str]:
    """The Containerfile's install command, run in a new virtual environment."""
    subprocess.run([sys.executable, "-m", "venv", str(tmp_path / name)], check=True)
    command = [str(tmp_path / name / "bin" / "pip"), *install(tmp_path)]
    return subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)


def copy_locks(folder: Path) -> None:
    for lock in IMAGE_LOCKS:
        (folder / lock).write_text((ROOT / lock).read_text())


def test_two_installs_from_the_lock_give_the_same_environment(tmp_path):
    copy_locks(tmp_path)
    freezes = []
    for name in ("one", "two"):
        assert fresh(tmp_path, name).returncode == 0
        freeze = [
            str(tmp_path / name / "bin" / "pip"),
            "freeze",
            "--all",
            "--exclude",
            "pip",
            "--exclude",
            "setuptools",
        ]
        freezes.append(subprocess.run(freeze, capture_output=True, text=True, check=True).stdout)
    assert freezes[0] == freezes[1]
    pins = {
        canonicalize_name(line.split("==")[0]): line.split("==")[1] for line in freezes[0].split()
    }
    image = {name: version for lock in IMAGE_LOCKS for name, (version, _) in locked(lock).items()}
    assert pins == image


def test_an_edited_hash_fails_the_install(tmp_path):
    copy_locks(tmp_path)
    text = (ROOT / "requirements.lock").read_text()
    block = re.search(r"^h11==.*?(?=^\S)", text, re.S | re.M)[0]  # h11's pin and file hashes
    edited = re.sub(
        r"sha256:([0-9a-f])",
        lambda digit: "sha256:" + "0123456789abcdef"[int(digit[1], 16) ^ 1],
        block,
    )
    (tmp_path / "requirements.lock").write_text(text.replace(block, edited))
    failed = fresh(tmp_path, "tampered")
    assert failed.returncode != 0
    assert "DO NOT MATCH THE HASHES" in failed.stdout + failed.stderr


@pytest.fixture(scope="module")
def sbom(tmp_path_factory):
    out = tmp_path_factory.mktemp("sbom") / "sbom.cdx.json"
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "sbom.py"), "-o", str(out)],
        check=True,
        capture_output=True,
    )
    return json.loads(out.read_text())


def components(sbom) -> dict[str, dict]:
    return {canonicalize_name(c["name"]): c for c in sbom["components"]}


def test_the_sbom_is_valid_cyclonedx_and_lists_every_locked_package_with_its_version_and_hash(sbom):
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(json.dumps(sbom)) is None
    listed = components(sbom)
    image = {name: version for lock in IMAGE_LOCKS for name, (version, _) in locked(lock).items()}
    for name, version in image.items():
        assert listed[name]["version"] == version
        assert [h["alg"] for h in listed[name]["hashes"]] == ["SHA-256"]
    for requirement in IMAGE:  # a dependency added to pyproject.toml without a new lock
        assert canonicalize_name(requirement.name) in listed, (
            f"{requirement.name}: run scripts/lock"
        )


INCOMPATIBLE = re.compile(
    r"\b(A?GPL|GNU (Affero )?General Public)"
)  # GPL and AGPL; LGPL (a library's) is not


def test_every_runtime_dependency_has_a_licence_compatible_with_bsd_3_clause(sbom):
    listed = components(sbom)
    for requirement in IMAGE:
        name = canonicalize_name(requirement.name)
        assert name in listed, f"{name} has no licence on record: run scripts/lock"
    for name, component in listed.items():
        licence = licences(component)
        assert licence, f"{name} declares no licence"
        assert not INCOMPATIBLE.search(licence), f"{name}: {licence}"


def test_the_readme_licence_table_is_the_sboms(sbom):
    assert table(sbom) in (ROOT / "README.md").read_text(), (
        "regenerate it: python scripts/sbom.py --table"
    )
