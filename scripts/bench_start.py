"""Benchmark: how fast `draco serve` is ready, how much memory it holds idle, and where
that memory goes.

Four providers are cached, as a sidecar's usually are: NordVPN (6,300 servers, about
21 MB, scaled from the real fixture), Surfshark, Mullvad and IVPN (their real fixtures),
each served by a loopback fake upstream. Default settings otherwise.

- start to ready: from exec to the first 200 of /health/ready, with the four lists in
  SNAPSHOT_DIR (a sidecar restarting on its volume); the median of --runs starts. The
  same with nothing stored (each list fetched and parsed first) is printed beside it.
- where the start goes: the same measure for a bare app on the same stack (Starlette on
  hypercorn, with an HTTP/2 httpx client made, as draco makes its upstream client,
  answering 200 at once), started alternately with draco in one run: the floor that no
  work of draco's own can go under. Then exec to exit of a fresh process that imports
  what each step of the memory breakdown imports, and the time the four snapshots take
  to read back through every check.
- idle RSS: once the four lists are fetched from the upstreams, a second later.
- where it goes, each in a fresh process: the interpreter alone, with asyncio and ssl,
  with Starlette and hypercorn, with everything `draco serve` imports; then the four
  lists held; then every render cache filled; then what parsing the 21 MB list leaves
  behind once it is dropped.

draco runs from the default install, `pip install draco`: a virtual environment made
from requirements.lock alone, as the image's is (the test environment imports more:
httpx loads `rich` for its command line whenever `rich` is installed). It is built in a
temporary folder unless --python names the interpreter of one.

    python scripts/bench_start.py [--runs 11] [--python PATH]
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
# The parent's own modules (httpx, the fake upstream) are imported in main() alone: the
# child that measures the lists must hold nothing but what `draco serve` holds.

CACHED = ("nordvpn", "surfshark", "mullvad", "ivpn")
CLOSED = "http://127.0.0.1:9/nowhere"  # the providers not cached: a closed loopback port
LIMIT_RSS_MIB = 40
LIMIT_READY_S = 0.25


def rss_kib(pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def default_install(folder: Path) -> str:
    """A virtual environment of requirements.lock and draco itself; its interpreter."""
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
    pip = [str(folder / "bin" / "pip"), "install", "--quiet", "--no-deps"]
    for lock in ("requirements.lock", "requirements-build.lock"):  # the build lock: setuptools
        subprocess.run([*pip, "--require-hashes", "-r", str(ROOT / lock)], check=True)
    subprocess.run([*pip, "--no-build-isolation", "-e", str(ROOT)], check=True)
    return str(folder / "bin" / "python")


def environment(urls: dict[str, str], snapshots: Path | None) -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    env |= {"WINDSCRIBE_API_URL": CLOSED, "AIRVPN_API_URL": CLOSED}
    env |= {f"{name.upper()}_API_URL": url for name, url in urls.items()}
    env["READY_PROVIDERS"] = json.dumps(list(CACHED))
    if snapshots:
        env["SNAPSHOT_DIR"] = str(snapshots)
    return env


# The bare app: the stack's imports and an upstream client, and nothing of draco's.
BARE = """
import asyncio, signal, sys
import httpx
from hypercorn.asyncio import serve
from hypercorn.config import Config
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

async def ready(request):
    return Response(b"ok")

async def main():
    client = httpx.AsyncClient(http2=True, verify=True)
    stopping = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
    config = Config()
    config.bind = [sys.argv[1]]
    app = Starlette(routes=[Route("/health/ready", ready)])
    await serve(app, config, shutdown_trigger=stopping.wait)
    await client.aclose()

asyncio.run(main())
"""


def start(
    python: str, env: dict[str, str], *, bare: bool = False
) -> tuple[subprocess.Popen[bytes], str, float]:
    """A `draco serve` (or the bare app), its base URL, and the seconds from exec to ready."""
    import httpx
    from fake_upstream import free_port

    port = free_port()
    bind = f"127.0.0.1:{port}"
    command = (
        [python, "-c", BARE, bind] if bare else [python, "-m", "draco", "serve", "--bind", bind]
    )
    began = time.perf_counter()
    process = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = began + 60
    while time.perf_counter() < deadline:
        try:
            if httpx.get(base + "/health/ready", timeout=1).status_code == 200:
                return process, base, time.perf_counter() - began
        except httpx.TransportError:
            pass
        time.sleep(0.002)
    process.kill()
    raise TimeoutError("draco was not ready within a minute")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    process.wait(15)


def readiness(python: str, env: dict[str, str], runs: int) -> float:
    seconds = []
    for _ in range(runs):
        process, _, took = start(python, env)
        stop(process)
        seconds.append(took)
    return statistics.median(seconds)


def readiness_beside_bare(python: str, env: dict[str, str], runs: int) -> tuple[float, float]:
    """Medians of draco's start to ready and the bare app's, started alternately."""
    draco, bare = [], []
    for _ in range(runs):
        for seconds, is_bare in ((draco, False), (bare, True)):
            process, _, took = start(python, env, bare=is_bare)
            stop(process)
            seconds.append(took)
    return statistics.median(draco), statistics.median(bare)


def idle_rss(python: str, env: dict[str, str]) -> int:
    import httpx

    process, base, _ = start(python, env)
    try:
        for name in CACHED:  # fetched from the upstream, not only restored
            page = f"{base}/api/{name}/servers?page_size=1"
            while httpx.get(page).headers.get("x-data-status") != "fresh":
                time.sleep(0.05)
        time.sleep(1)
        return rss_kib(process.pid)
    finally:
        stop(process)


# --- where the memory goes, each step in a fresh process ----------------------------------


STEPS = {
    "interpreter": "pass",
    "+ asyncio, ssl": "import asyncio, ssl",
    "+ starlette, hypercorn": "import asyncio, ssl, starlette.applications, hypercorn.asyncio",
    "+ everything `draco serve` imports": "import draco.cli, draco.app, draco.catalog.demo, "
    "hypercorn.asyncio",
}
SERVE_IMPORTS = ("draco.cli", "draco.app", "draco.catalog.demo", "hypercorn.asyncio")


RSS = (
    "import gc; gc.collect(); "
    "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmRSS')][0])"
)


def imports_rss(python: str, code: str) -> int:
    """RSS (KiB) of a bare `python -c` that runs `code`: nothing of this script's own."""
    command = [python, "-c", f"{code}\n{RSS}"]
    done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT)
    return int(done.stdout.split()[-1])


def run_seconds(python: str, code: str) -> float:
    """Seconds from exec to exit of a bare `python -c` that runs `code`, median of 5."""
    seconds = []
    for _ in range(5):
        began = time.perf_counter()
        subprocess.run([python, "-c", code], check=True, cwd=ROOT)
        seconds.append(time.perf_counter() - began)
    return statistics.median(seconds)


def child_lists(payload_dir: str) -> None:
    """In a fresh process: RSS with serve's imports, then with the four lists, then with
    every render cache full, then after a 21 MB parse has been dropped; last, the seconds
    the four snapshots in SNAPSHOT_DIR take to read back."""
    for module in SERVE_IMPORTS:
        importlib.import_module(module)
    from draco.catalog.dataset import RENDER_CACHE_BYTES, make_dataset, render
    from draco.catalog.snapshot import read_snapshot
    from draco.models import paginate
    from draco.providers import REGISTRY

    gc.collect()
    readings: dict[str, float] = {"imports": rss_kib()}
    bodies = {name: (Path(payload_dir) / name).read_bytes() for name in CACHED}
    kept = {}
    for name, body in bodies.items():
        kept[name] = make_dataset(name, REGISTRY[name].parse(body).servers, 0.0)
    del bodies
    gc.collect()
    readings["lists"] = rss_kib()
    for data in kept.values():
        size = 1
        while sum(r.size for r in data.rendered.values()) < RENDER_CACHE_BYTES * 0.95:
            size += 1
            render(data, ("page", size), lambda d=data, n=size: paginate(d.servers, 1, n).data)
            if size > len(data.servers) + 600:
                break
    gc.collect()
    readings["render caches full"] = rss_kib()
    body = (Path(payload_dir) / "nordvpn").read_bytes()
    parsed = REGISTRY["nordvpn"].parse(body)
    del body, parsed
    gc.collect()
    readings["after a 21 MB parse, dropped"] = rss_kib()
    reads = []  # last, so that its garbage is in no RSS reading
    for _ in range(5):
        began = time.perf_counter()
        for name in CACHED:
            read_snapshot(Path(payload_dir) / "snapshots", name)
        reads.append(time.perf_counter() - began)
    readings["snapshot seconds"] = statistics.median(reads)
    print(json.dumps(readings))


def fresh(python: str, *args: str) -> dict[str, float]:
    """This script again, as a child in the default install."""
    command = [python, __file__, *args]
    done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT)
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=11)
    parser.add_argument("--python", help="the interpreter of a default install of draco")
    parser.add_argument("--child-lists", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_lists:
        child_lists(args.child_lists)
        return

    from bench_refresh import payloads
    from fake_upstream import FakeUpstream

    building = tempfile.TemporaryDirectory()
    python = args.python or default_install(Path(building.name) / "venv")
    bodies = {name: body for name, body in payloads().items() if name in CACHED}
    fakes = {name: FakeUpstream(body) for name, body in bodies.items()}
    urls = {name: fake.url for name, fake in fakes.items()}
    with tempfile.TemporaryDirectory() as folder:
        snapshots = Path(folder) / "snapshots"
        try:
            first, _, _ = start(python, environment(urls, snapshots))  # fills SNAPSHOT_DIR
            time.sleep(1)
            stop(first)
            warm, bare = readiness_beside_bare(python, environment(urls, snapshots), args.runs)
            cold = readiness(python, environment(urls, None), max(3, args.runs // 3))
            idle = idle_rss(python, environment(urls, None))
        finally:
            for fake in fakes.values():
                fake.stop()
        print(f"draco serve, default settings, {', '.join(CACHED)} cached:")
        verdict = "met" if warm <= LIMIT_READY_S else "NOT met"
        print(f"  start to ready, lists in SNAPSHOT_DIR: {warm:.3f} s median of {args.runs}")
        print(f"    (goal {LIMIT_READY_S} s: {verdict})")
        print(f"  start to ready, nothing stored (fetched and parsed first): {cold:.3f} s")
        print(f"  bare app on the same stack, started alternately: {bare:.3f} s median")
        print(f"    (draco's start less the floor: {warm - bare:.3f} s)")
        verdict = "met" if idle / 1024 <= LIMIT_RSS_MIB else "NOT met"
        print(f"  idle RSS: {idle / 1024:.1f} MiB (goal {LIMIT_RSS_MIB} MiB: {verdict})")

        for name, body in bodies.items():
            (Path(folder) / name).write_bytes(body)
        lists = fresh(python, "--child-lists", folder)
        print("where the start goes (exec to exit of a fresh process at each step, medians of 5):")
        steps(
            {label: run_seconds(python, code) for label, code in STEPS.items()},
            "{:6.3f} s".format,
        )
        print(f"  reading the four snapshots back: {lists['snapshot seconds']:.3f} s median of 5")
        print("where the memory goes (RSS of a fresh process at each step):")
        memory = {label: imports_rss(python, code) / 1024 for label, code in STEPS.items()}
        for label in ("lists", "render caches full", "after a 21 MB parse, dropped"):
            memory[f"+ {label}"] = lists[label] / 1024
        steps(memory, "{:6.1f} MiB".format)


def steps(readings: dict[str, float], show: Callable[[float], str]) -> None:
    """Each step's reading, and what it adds to the one before."""
    previous = 0.0
    for label, value in readings.items():
        print(f"  {label:<40} {show(value)}  (+{show(value - previous).strip()})")
        previous = value


if __name__ == "__main__":
    main()
