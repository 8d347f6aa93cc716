"""Write a CycloneDX SBOM of draco's runtime environment, as installing the locks builds it.

A fresh virtual environment (no pip, no setuptools) is given exactly what the
Containerfile installs: the service's lock and those of the extras the image carries
(redis, metrics), with hashes required. CycloneDX's
own tool (`cyclonedx-py environment`, from cyclonedx-bom) then describes it: every
component with its name, version and licence; each gets the SHA-256 of the very
file pip installed (from pip's installation report). The document is checked
against the CycloneDX schema before it is written.

    python scripts/sbom.py [-o sbom.cdx.json] [--table]

--table prints the README's table of runtime dependencies and their licences.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
# What the image installs: the service, and the extras it documents.
IMAGE_LOCKS = ("requirements.lock", "requirements-redis.lock", "requirements-metrics.lock")


def install(root: Path, locks: tuple[str, ...] = IMAGE_LOCKS) -> list[str]:
    """The Containerfile's install command for the locked dependencies (after `pip`)."""
    files = [argument for lock in locks for argument in ("-r", str(root / lock))]
    return ["install", "--no-cache-dir", "--require-hashes", "--no-deps", *files]


def environment(folder: Path) -> tuple[Path, dict[str, str]]:
    """A virtual environment holding the lock, and the SHA-256 of each file installed."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    python, report = folder / "bin" / "python", folder / "report.json"
    pip = [
        sys.executable,
        "-m",
        "pip",
        "--python",
        str(python),
        *install(ROOT),
        "--quiet",
        "--report",
        str(report),
    ]
    done = subprocess.run(pip, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"installing the lock failed:\n{done.stdout}{done.stderr}")
    installed = json.loads(report.read_text())["install"]
    return python, {
        canonicalize_name(item["metadata"]["name"]): item["download_info"]["archive_info"][
            "hashes"
        ]["sha256"]
        for item in installed
    }


def sbom() -> dict:
    with tempfile.TemporaryDirectory() as folder:
        python, hashes = environment(Path(folder) / "env")
        command = [
            sys.executable,
            "-m",
            "cyclonedx_py",
            "environment",
            str(python),
            "--output-reproducible",
            "--pyproject",
            str(ROOT / "pyproject.toml"),
            "--of",
            "JSON",
            "-o",
            "-",
        ]
        document = json.loads(
            subprocess.run(command, capture_output=True, text=True, check=True).stdout
        )
    for component in document["components"]:
        component["hashes"] = [
            {"alg": "SHA-256", "content": hashes[canonicalize_name(component["name"])]}
        ]
    problem = JsonStrictValidator(SchemaVersion.V1_6).validate_str(json.dumps(document))
    if problem is not None:
        raise SystemExit(f"not a valid CycloneDX 1.6 document: {problem}")
    return document


def licences(component: dict) -> str:
    """A component's licences, as its package metadata declares them."""
    found = [
        entry.get("expression") or entry["license"].get("id") or entry["license"].get("name", "")
        for entry in component.get("licenses", [])
    ]
    return "; ".join(name.removeprefix("License :: OSI Approved :: ") for name in found)


def table(document: dict) -> str:
    rows = sorted(
        (canonicalize_name(c["name"]), c["version"], licences(c)) for c in document["components"]
    )
    lines = ["| package | version | licence |", "|---|---|---|"]
    return "\n".join(
        lines + [f"| {name} | {version} | {licence} |" for name, version, licence in rows]
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-o", "--output", type=Path, default=ROOT / "sbom.cdx.json")
    parser.add_argument("--table", action="store_true", help="print the licence table instead")
    args = parser.parse_args()
    document = sbom()
    if args.table:
        print(table(document))
    else:
        args.output.write_text(json.dumps(document, indent=2) + "\n")
        print(f"{args.output}: {len(document['components'])} components")


if __name__ == "__main__":
    main()
