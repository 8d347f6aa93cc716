"""Shared test machinery: real `python -m draco serve` processes and real fake upstreams."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from fake_upstream import FakeUpstream, free_port  # noqa: E402

from draco.providers import REGISTRY  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures"  # real captured payloads, see its SOURCES.md
DEMO = ROOT / "draco" / "demo_data"
KEY = "k" * 40
OTHER_KEY = "o" * 40
PROVIDERS = tuple(REGISTRY)
# Tests never reach a real provider: any upstream a test does not set is a closed loopback port.
NOWHERE = {f"{name.upper()}_API_URL": "http://127.0.0.1:9/nowhere" for name in REGISTRY}


def need(tool: str) -> str:
    """The path of a system tool; its test is skipped where it is missing, except in CI."""
    path = shutil.which(tool) or next(
        (p for p in (f"/usr/sbin/{tool}", f"/sbin/{tool}") if os.access(p, os.X_OK)), None
    )
    if path is None:
        message = f"{tool} is not installed (see README, Testing)"
        pytest.fail(message) if os.environ.get("CI") == "true" else pytest.skip(message)
    return path


def eventually(predicate, seconds: float = 8.0) -> bool:
    """Whether `predicate()` comes true within `seconds`, asked every tenth of a second."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def sloppy(key: str) -> str:
    """The same 32 bytes in base64 with a spare bit set: another spelling `wg` refuses."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    spelled = key[:-2] + alphabet[alphabet.index(key[-2]) + 1] + "="
    assert base64.b64decode(spelled) == base64.b64decode(key)
    assert spelled != key
    return spelled


def demo_payload(provider: str) -> bytes:
    return (DEMO / f"{provider}.json").read_bytes()


def fixture_files(provider: str) -> list[Path]:
    """The real captured payloads of a provider."""
    return sorted((FIXTURES / provider).glob("*.json"))


class Draco:
    """A running `python -m draco serve` process on a free loopback port."""

    def __init__(self, env: dict[str, str], args=(), host: str = "127.0.0.1", wait: bool = True):
        self.host, self.port = host, free_port(host)
        # Kept after the process exits, for its log; close() removes it.
        self.log = tempfile.NamedTemporaryFile(prefix="draco-", suffix=".log", delete=False)  # noqa: SIM115
        base = {
            k: os.environ[k] for k in ("PATH", "HOME", "LANG", "VIRTUAL_ENV") if k in os.environ
        }
        self.env = {**base, **NOWHERE, "PYTHONUNBUFFERED": "1", **env}
        bind = f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "draco", "serve", "--bind", bind, *args],
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        self.base = f"{'https' if '--certfile' in args else 'http'}://{bind}"
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"draco exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                # Only whether it answers: a test's own self-signed certificate.
                httpx.get(self.base + "/health", timeout=0.5, verify=False)  # noqa: S501
                return
            except httpx.TransportError:
                time.sleep(0.05)
        raise TimeoutError(f"draco did not start:\n{self.logs()}")

    def url(self, path: str) -> str:
        return self.base + path

    def logs(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def rss_peak_kb(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise RuntimeError("no VmHWM")

    def stop(self, sig=None) -> int:
        if self.proc.poll() is None:
            if sig is None:
                self.proc.terminate()
            else:
                self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def close(self) -> None:
        self.stop()
        os.unlink(self.log.name)


@pytest.fixture
def start_draco():
    """Start draco processes for a test; all are stopped afterwards."""
    started: list[Draco] = []

    def start(env: dict[str, str] | None = None, args=(), **kwargs) -> Draco:
        process = Draco(env or {}, args, **kwargs)
        started.append(process)
        return process

    yield start
    for process in started:
        process.close()


@pytest.fixture
def upstreams():
    """One fake upstream per provider, serving the project's own demo payloads."""
    fakes = {name: FakeUpstream(demo_payload(name)) for name in PROVIDERS}
    yield fakes
    for fake in fakes.values():
        fake.stop()


def upstream_env(fakes: dict[str, FakeUpstream]) -> dict[str, str]:
    return {f"{name.upper()}_API_URL": fake.url for name, fake in fakes.items()}


@pytest.fixture(scope="module")
def module_upstreams():
    fakes = {name: FakeUpstream(demo_payload(name)) for name in PROVIDERS}
    yield fakes
    for fake in fakes.values():
        fake.stop()


@pytest.fixture(scope="module")
def service(module_upstreams):
    """One draco process for read-only endpoint tests: auth off, a generous limit."""
    process = Draco({**upstream_env(module_upstreams), "RATE_LIMIT_REQUESTS": "10000"})
    yield process
    process.close()


@pytest.fixture(scope="session")
def certificate(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1, and its key: (cert.pem, key.pem)."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            need("openssl"),
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture(params=["http1", "h2c"])
def client(request):
    """An HTTP/1.1 client, or an HTTP/2 client speaking h2c with prior knowledge."""
    h2c = request.param == "h2c"
    with httpx.Client(http1=not h2c, http2=h2c, timeout=10) as c:
        c.expected_version = "HTTP/2" if h2c else "HTTP/1.1"
        yield c
