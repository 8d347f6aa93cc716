"""The fault-injection suite (scripts/faults.py) against real processes, plus crashes,
restarts and graceful shutdown."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time

import faults
import httpx
import pytest
from conftest import ROOT
from fake_upstream import FakeUpstream

from draco.providers import REGISTRY


@pytest.mark.parametrize("name", list(faults.FAULTS))
def test_a_faulty_upstream_never_costs_the_served_list(name):
    outcome = faults.run_fault(faults.FAULTS[name])
    assert outcome["worst_status"] == 200  # no 5xx while data exists
    assert outcome["all_stale"], outcome
    assert outcome["unchanged"], outcome
    assert outcome["ages_ok"], outcome
    assert outcome["upstream_requests"] <= 4, outcome  # once per backoff step, not once per request
    assert outcome["recovered_list"], outcome
    assert outcome["recovered_age"] <= 2, outcome


def test_kill_9_mid_refresh_then_a_restart_with_the_upstream_down_serves_the_last_good_list(
    tmp_path,
):
    with FakeUpstream(faults.HEALTHY) as upstream:
        first = faults.Service(upstream, tmp_path)
        good = first.get().json()
        assert first.stop() == 0
        assert (tmp_path / f"{faults.PROVIDER}.json").exists()

        upstream.set("trickle")  # the next refresh will be in flight for seconds
        second = faults.Service(upstream, tmp_path)
        assert second.get().headers["x-data-status"] == "stale"  # provisional, refresh started
        time.sleep(0.5)
        assert upstream.hits == 2
        second.stop(signal.SIGKILL)

        upstream.set("refused")
        third = faults.Service(upstream, tmp_path)
        try:
            answer = third.get()
            assert answer.status_code == 200
            assert answer.json() == good
            assert answer.headers["x-data-status"] == "stale"
        finally:
            third.stop()


def test_sigterm_lets_in_flight_requests_finish_and_leaves_the_snapshot_current(tmp_path):
    with FakeUpstream(faults.HEALTHY) as upstream:
        upstream.set("delay", delay=1.0)
        service = faults.Service(upstream, tmp_path)
        with httpx.Client(timeout=30) as client:
            request = client.build_request(
                "GET", f"{service.base}/api/{faults.PROVIDER}/servers?page_size=1000"
            )
            result = {}
            worker = threading.Thread(
                target=lambda: result.setdefault("answer", client.send(request))
            )
            worker.start()
            time.sleep(0.3)  # the cold fetch is waiting on the slow upstream
            service.proc.send_signal(signal.SIGTERM)
            worker.join(20)
        assert result["answer"].status_code == 200
        assert service.proc.wait(20) == 0
        snapshot = json.loads((tmp_path / f"{faults.PROVIDER}.json").read_bytes())
        assert [s["identifier"] for s in snapshot["servers"]] == [
            s["identifier"] for s in result["answer"].json()
        ]


def test_draco_snapshot_writes_every_provider(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "draco", "snapshot", "--demo"],
        env={"PATH": "/usr/bin:/bin", "SNAPSHOT_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert "nordvpn: 65 servers" in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{name}.json" for name in REGISTRY)


def test_draco_snapshot_fails_when_a_provider_fails(tmp_path):
    with FakeUpstream(b"[]") as upstream:
        upstream.set("status", status=500)
        env = {"PATH": "/usr/bin:/bin", "SNAPSHOT_DIR": str(tmp_path)}
        env |= {f"{name.upper()}_API_URL": upstream.url for name in REGISTRY}
        result = subprocess.run(
            [sys.executable, "-m", "draco", "snapshot"],
            env=env,
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
    assert result.returncode == 1
    assert "nordvpn: failed (http_500)" in result.stdout
