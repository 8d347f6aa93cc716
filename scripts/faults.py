"""Fault injection: a real `python -m draco serve` against a fake upstream that misbehaves.

For each fault, draco starts with a two-hour-old last-known-good snapshot (so the
first request triggers a refresh), the fake upstream misbehaves, and a client asks
for the list ten times a second for three seconds. Then the upstream heals and we
wait for draco to serve fresh data again. Each outcome records: the worst status a
client saw, whether every answer was the unchanged stale list with an honest Age,
how many requests the upstream received, and how long recovery took.

    python scripts/faults.py            # prints a table of faults x outcomes
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from fake_upstream import FakeUpstream, free_port, wait_for_port  # noqa: E402

from draco.catalog.dataset import make_dataset  # noqa: E402
from draco.catalog.snapshot import snapshot_bytes, write_snapshot  # noqa: E402
from draco.providers import REGISTRY  # noqa: E402

PROVIDER = "surfshark"
HEALTHY = (HERE.parent / "draco" / "demo_data" / f"{PROVIDER}.json").read_bytes()
SNAPSHOT_AGE = 7200
MiB = 1 << 20


def _shrunk() -> bytes:
    clusters = json.loads(HEALTHY)
    return json.dumps(clusters[: len(clusters) // 10]).encode()


FAULTS = {
    "timeout (no answer)": {"mode": "hang"},
    "connection refused": {"mode": "refused"},
    "500": {"mode": "status", "status": 500},
    "429 with Retry-After: 2": {"mode": "status", "status": 429, "headers": {"Retry-After": "2"}},
    "HTML maintenance page": {"mode": "html"},
    "malformed JSON": {"mode": "ok", "body": HEALTHY[: len(HEALTHY) // 3] + b"}}]"},
    "truncated body": {"mode": "truncated"},
    "valid JSON, wrong shape": {"mode": "ok", "body": b'{"clusters": [], "total": 0}'},
    "empty list": {"mode": "ok", "body": b"[]"},
    "list shrunk by 90%": {"mode": "ok", "body": _shrunk()},
    "300 MB body": {"mode": "huge", "size": 300 * MiB},
    "1 byte a second": {"mode": "trickle"},
}


class Service:
    """draco as a subprocess with a snapshot directory and one fake upstream."""

    def __init__(self, upstream: FakeUpstream, snapshots: Path, **env: str):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        nowhere = {
            f"{name.upper()}_API_URL": "http://127.0.0.1:9/nowhere" for name in REGISTRY
        }  # never the internet
        settings = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            **nowhere,
            f"{PROVIDER.upper()}_API_URL": upstream.url,
            "SNAPSHOT_DIR": str(snapshots),
            "HTTP_TIMEOUT": "5",
            "UPSTREAM_MAX_BYTES": str(8 * MiB),
            "RATE_LIMIT_REQUESTS": "10000",
            **env,
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "draco", "serve", "--bind", f"127.0.0.1:{self.port}"],
            env=settings,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=HERE.parent,
        )
        wait_for_port("127.0.0.1", self.port)

    def get(self) -> httpx.Response:
        return httpx.get(f"{self.base}/api/{PROVIDER}/servers?page_size=1000", timeout=30)

    def stop(self, signal_number: int | None = None) -> int:
        if signal_number is None:
            self.proc.terminate()
        else:
            self.proc.send_signal(signal_number)
        return self.proc.wait(30)


def seed_snapshot(directory: Path, age: float = SNAPSHOT_AGE) -> list:
    servers, _ = REGISTRY[PROVIDER].parse(HEALTHY)
    write_snapshot(
        directory, PROVIDER, snapshot_bytes(make_dataset(PROVIDER, servers, time.time() - age))
    )
    return [s.identifier for s in servers]


def run_fault(fault: dict, seconds: float = 3.0) -> dict:
    with tempfile.TemporaryDirectory() as folder, FakeUpstream(HEALTHY) as upstream:
        snapshots = Path(folder)
        stale = seed_snapshot(snapshots)
        upstream.set(**fault)
        service = Service(upstream, snapshots)
        try:
            answers, began = [], time.time()
            while time.time() - began < seconds:
                answers.append((time.time() - began, service.get()))
                time.sleep(0.1)
            asked = upstream.hits
            upstream.set("ok", body=HEALTHY)
            healed = time.time()
            recovered = None
            while time.time() - healed < 30:
                answer = service.get()
                if answer.headers.get("x-data-status") == "fresh":
                    recovered = (time.time() - healed, answer)
                    break
                time.sleep(0.2)
        finally:
            service.stop()
    ages_ok = all(
        abs(int(a.headers["age"]) - (SNAPSHOT_AGE + t)) <= 3
        for t, a in answers
        if a.status_code == 200
    )
    return {
        "requests": len(answers),
        "worst_status": max(a.status_code for _, a in answers),
        "all_stale": all(a.headers.get("x-data-status") == "stale" for _, a in answers),
        "unchanged": all([s["identifier"] for s in a.json()] == stale for _, a in answers),
        "ages_ok": ages_ok,
        "upstream_requests": asked,
        "recovered_after": None if recovered is None else round(recovered[0], 1),
        "recovered_list": recovered is not None
        and [s["identifier"] for s in recovered[1].json()] == stale,
        "recovered_age": None if recovered is None else int(recovered[1].headers["age"]),
    }


def main() -> None:
    columns = ["fault", "client answers", "worst status", "stale list unchanged, honest Age"]
    print("| " + " | ".join([*columns, "upstream asked (3 s)", "fresh again after"]) + " |")
    print("|---|---|---|---|---|---|")
    for name, fault in FAULTS.items():
        o = run_fault(fault)
        kept = "yes" if o["all_stale"] and o["unchanged"] and o["ages_ok"] else "NO"
        back = f"{o['recovered_after']} s" if o["recovered_list"] else "NO"
        print(
            f"| {name} | {o['requests']} | {o['worst_status']} | {kept} "
            f"| {o['upstream_requests']} | {back} |"
        )


if __name__ == "__main__":
    main()
