"""draco as a sidecar: readiness through a real `draco serve`, and the Kubernetes manifests,
validated offline and checked field by field, with their memory limit held under load."""

from __future__ import annotations

import asyncio
import copy
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import kubernetes_validate
import pytest
import yaml
from bench_refresh import nordvpn_payload, payloads
from conftest import KEY, ROOT, eventually, upstream_env
from fake_upstream import FakeUpstream

from draco.catalog.dataset import make_dataset
from draco.catalog.snapshot import snapshot_bytes, write_snapshot
from draco.providers import REGISTRY

MANIFESTS = sorted((ROOT / "conf" / "kubernetes").glob("*.yaml"))
# The IPv4 ranges of the IANA special-purpose registry that are not globally reachable.
NOT_GLOBAL = {
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.0.2.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "240.0.0.0/4",
}


def ready(draco) -> httpx.Response:
    return httpx.get(draco.url("/health/ready"), timeout=5)


def snapshot(folder: Path, provider: str, age: float) -> None:
    servers = REGISTRY[provider].parse(
        (ROOT / "draco" / "demo_data" / f"{provider}.json").read_bytes()
    )[0]
    write_snapshot(
        folder, provider, snapshot_bytes(make_dataset(provider, servers, time.time() - age))
    )


# --- /health/ready -------------------------------------------------------------------------------


def test_not_ready_while_a_listed_provider_has_nothing_then_ready_once_it_has(
    start_draco, upstreams
):
    upstreams["mullvad"].set("refused")
    env = {
        **upstream_env(upstreams),
        "READY_PROVIDERS": '["mullvad", "ivpn"]',
        "REFRESH_BACKOFF_MAX": "1",
    }
    draco = start_draco(env)
    refused = ready(draco)
    assert refused.status_code == 503
    assert refused.json()["error"] == "Service Unavailable"
    assert "mullvad" in refused.json()["message"]
    assert "ivpn" not in refused.json()["message"]
    assert httpx.get(draco.url("/health")).status_code == 200  # alive all the same
    upstreams["mullvad"].set("ok")
    assert eventually(
        lambda: ready(draco).status_code == 200, 15
    )  # the probe itself drives the retries
    assert ready(draco).json() == {"status": "ready", "providers": ["mullvad", "ivpn"]}


def test_health_is_503_once_every_provider_has_failed_with_nothing_to_serve(start_draco):
    draco = start_draco({})  # every upstream a closed port
    assert eventually(lambda: httpx.get(draco.url("/health")).status_code == 503)
    body = httpx.get(draco.url("/health")).json()
    assert body["status"] == "unhealthy"
    assert {p["last_failure"] for p in body["providers"].values()} == {"connection"}


def test_ready_at_start_without_any_client_request(start_draco, upstreams):
    draco = start_draco({**upstream_env(upstreams), "READY_PROVIDERS": '["ivpn"]'})
    assert eventually(lambda: upstreams["ivpn"].hits == 1, 5)  # fetched in the background at start
    assert ready(draco).status_code == 200


def test_ready_on_a_stale_snapshot_within_cache_max_stale_then_not_past_it(
    start_draco, upstreams, tmp_path
):
    upstreams["surfshark"].set("refused")
    snapshot(tmp_path, "surfshark", age=57)
    env = {
        **upstream_env(upstreams),
        "SNAPSHOT_DIR": str(tmp_path),
        "READY_PROVIDERS": '["surfshark"]',
        "CACHE_TTL": "60",
        "CACHE_MAX_STALE": "60",
    }
    draco = start_draco(env)
    assert ready(draco).status_code == 200  # stale, within CACHE_MAX_STALE
    assert httpx.get(draco.url("/api/surfshark/servers")).headers["x-data-status"] == "stale"
    assert eventually(lambda: ready(draco).status_code == 503, 10)  # past it
    assert "surfshark" in ready(draco).json()["message"]


def test_readiness_needs_no_key_and_is_never_limited(start_draco, upstreams):
    env = {
        **upstream_env(upstreams),
        "ENABLE_API_KEY_AUTH": "true",
        "API_KEYS": f'["{KEY}"]',
        "RATE_LIMIT_REQUESTS": "10",
        "READY_PROVIDERS": '["ivpn"]',
    }
    draco = start_draco(env)
    eventually(lambda: ready(draco).status_code == 200, 5)
    assert {ready(draco).status_code for _ in range(25)} == {200}


# --- the manifests --------------------------------------------------------------------------------


def documents() -> list[dict]:
    return [doc for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text()) if doc]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda path: path.name)
def test_every_manifest_validates_against_the_kubernetes_schemas(path):
    for doc in yaml.safe_load_all(path.read_text()):
        kubernetes_validate.validate(doc, "1.30", strict=True)


def deployment() -> dict:
    return next(doc for doc in documents() if doc["kind"] == "Deployment")


def sidecar(spec: dict) -> dict:
    return next(c for c in spec["initContainers"] if c["name"] == "draco")


def deployed_sidecar() -> dict:
    return sidecar(deployment()["spec"]["template"]["spec"])


def env_of(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def probe(container: dict, name: str) -> str:
    return " ".join(container.get(name, {}).get("exec", {}).get("command", []))


def problems(deployment: dict, policy: dict) -> list[str]:
    """What a reviewer checks, field by field; empty when every one is there."""
    pod = deployment["spec"]["template"]["spec"]
    context, draco = pod.get("securityContext", {}), sidecar(pod)
    own, resources = draco.get("securityContext", {}), draco.get("resources", {})
    env = env_of(draco)
    mounted = {
        m["mountPath"]: next(v for v in pod["volumes"] if v["name"] == m["name"])
        for m in draco["volumeMounts"]
    }
    egress = sorted(
        port["port"] for rule in policy["spec"].get("egress", []) for port in rule.get("ports", [])
    )
    checks = {
        "runAsNonRoot": context.get("runAsNonRoot") is True,
        "uid 65532": context.get("runAsUser") == 65532,
        "gid 65532": context.get("runAsGroup") == 65532,
        "seccomp RuntimeDefault": context.get("seccompProfile", {}).get("type") == "RuntimeDefault",
        "no privilege escalation": own.get("allowPrivilegeEscalation") is False,
        "read-only root": own.get("readOnlyRootFilesystem") is True,
        "every capability dropped": own.get("capabilities", {}).get("drop") == ["ALL"],
        "native sidecar": draco.get("restartPolicy") == "Always",
        "loopback only": "127.0.0.1:" in " ".join(draco.get("command", []))
        and not draco.get("ports"),
        "keys from a Secret file": "secret" in mounted.get("/run/secrets/draco", {})
        and "API_KEYS" not in env
        and env.get("API_KEYS_FILE", "").startswith("/run/secrets/draco/"),
        "snapshots on an emptyDir": "emptyDir" in mounted.get(env.get("SNAPSHOT_DIR", ""), {}),
        "memory and CPU requests and limits": all(
            resources.get(kind, {}).get(what)
            for kind in ("requests", "limits")
            for what in ("memory", "cpu")
        ),
        "startup and readiness on /health/ready": "/health/ready" in probe(draco, "startupProbe")
        and "/health/ready" in probe(draco, "readinessProbe"),
        "liveness on /health": "GET /health HTTP" in probe(draco, "livenessProbe"),
        "egress: DNS and 443 only": egress == [53, 53, 443],
        "no ingress": policy["spec"].get("ingress") == []
        and "Ingress" in policy["spec"].get("policyTypes", []),
        "images pinned by digest": all(
            re.fullmatch(r"[a-z0-9.\-/]+@sha256:[0-9a-f]{64}", c["image"])
            for c in (*pod["initContainers"], *pod["containers"])
        ),
        "no key on a command line": all(
            "api_keys" not in " ".join(c.get("command", [])) for c in pod["containers"]
        )
        and "-H @/run/secrets/" in " ".join(pod["containers"][0].get("command", [])),
        "egress leaves out every special range": {
            block
            for rule in policy["spec"].get("egress", [])
            for peer in rule.get("to", [])
            for block in peer.get("ipBlock", {}).get("except", [])
        }
        >= NOT_GLOBAL,
    }
    return [name for name, ok in checks.items() if not ok]


def policy() -> dict:
    return next(doc for doc in documents() if doc["kind"] == "NetworkPolicy")


def test_the_pod_has_every_security_field():
    assert problems(deployment(), policy()) == []


REMOVALS = {
    "runAsNonRoot": ("pod", "securityContext", "runAsNonRoot"),
    "uid 65532": ("pod", "securityContext", "runAsUser"),
    "seccomp RuntimeDefault": ("pod", "securityContext", "seccompProfile"),
    "no privilege escalation": ("draco", "securityContext", "allowPrivilegeEscalation"),
    "read-only root": ("draco", "securityContext", "readOnlyRootFilesystem"),
    "every capability dropped": ("draco", "securityContext", "capabilities"),
    "native sidecar": ("draco", "restartPolicy"),
    "memory and CPU requests and limits": ("draco", "resources"),
    "startup and readiness on /health/ready": ("draco", "startupProbe"),
    "liveness on /health": ("draco", "livenessProbe"),
}


@pytest.mark.parametrize("check", REMOVALS)
def test_removing_a_security_field_is_caught(check):
    changed = copy.deepcopy(deployment())
    where, *path = REMOVALS[check]
    node = (
        changed["spec"]["template"]["spec"]
        if where == "pod"
        else sidecar(changed["spec"]["template"]["spec"])
    )
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    assert check in problems(changed, policy())


def nordvpn_as_large_as(cap: int) -> bytes:
    """A NordVPN list just under `cap` bytes."""
    per_server = len(nordvpn_payload(1000)) / 1000
    body = nordvpn_payload(int(cap * 0.98 / per_server))
    assert 0.95 * cap < len(body) <= cap
    return body


def memory_limit_kib() -> int:
    limit = deployed_sidecar()["resources"]["limits"]["memory"]
    assert limit.endswith("Mi")
    return int(limit[:-2]) * 1024


EVERYDAY = [f"/api/{p}/servers?page_size=500" for p in (*REGISTRY, "all")]
EVERYDAY += [
    "/api/all/countries",
    "/api/nordvpn/servers/top",
    "/api/all/servers?city=London",
    "/health/ready",
]
# Each a different page, so each is encoded and compressed anew: 1,200 answers of 401 to 1,000
# servers.
CYCLING = [
    f"/api/{p}/servers?page_size={size}"
    for size in range(1000, 400, -1)
    for p in ("nordvpn", "all")
]
FILL = "every render cache"  # stands for the paths that fill each list's cache, found once ready


def filling(base: str) -> list[str]:
    """For every provider and `all`, more different answers than its render cache keeps
    (dataset.RENDER_CACHE_SIZE), each a page within the list."""
    totals = {p["name"]: p["servers"] for p in httpx.get(base + "/api/providers").json()}
    totals["all"] = sum(totals.values())
    paths = []
    for name, total in totals.items():
        pages = [
            (page, size) for size in range(1, total + 1) for page in range(1, -(-total // size) + 1)
        ]
        paths += [f"/api/{name}/servers?page={pg}&page_size={sz}" for pg, sz in pages[:560]]
    return paths


async def load(base: str, paths: list[str], seconds: float = 8.0, clients: int = 32) -> int:
    done, stop = 0, time.monotonic() + seconds

    async def client(n: int) -> None:
        nonlocal done
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            while time.monotonic() < stop:
                response = await http.get(
                    paths[(n + done) % len(paths)], headers={"Accept-Encoding": "gzip"}
                )
                assert response.status_code == 200
                done += 1

    await asyncio.gather(*(client(n) for n in range(clients)))
    return done


class Probes:
    """The manifest's readiness and liveness exec probes, run as the kubelet runs them,
    both at once, again and again while the load runs: Python processes inside the
    container, in its memory budget. Each reports its own peak RSS as it ends (a forked
    child's rusage would count the test's own pages, shared until exec)."""

    PEAK = (
        "import atexit\natexit.register(lambda: print([l for l in open('/proc/self/status') "
        "if l.startswith('VmHWM')][0].split()[1]))\n"
    )

    def __init__(self, port: int):
        draco = deployed_sidecar()
        self.commands = []
        for name in ("readinessProbe", "livenessProbe"):
            python, flag, code = draco[name]["exec"]["command"]
            assert (python, flag) == ("python", "-c")
            assert "('127.0.0.1', 8000)" in code
            code = code.replace("('127.0.0.1', 8000)", f"('127.0.0.1', {port})")
            self.commands.append([sys.executable, "-c", self.PEAK + code])
        self.peaks_kib: list[int] = [0] * len(self.commands)
        self.runs = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stopping.is_set():
            started = [
                subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
                for command in self.commands
            ]
            for n, process in enumerate(started):
                out, _ = process.communicate(timeout=10)
                assert process.returncode == 0
                self.peaks_kib[n] = max(self.peaks_kib[n], int(out.split()[-1]))
            self.runs += 1

    def __enter__(self) -> Probes:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        self.thread.join(30)


@pytest.mark.parametrize(
    ("paths", "largest"),
    [(EVERYDAY, False), (CYCLING, False), (FILL, False), (FILL, True)],
    ids=[
        "everyday",
        "cycling page sizes",
        "every render cache full",
        "every render cache full, NordVPN at the manifest's cap",
    ],
)
def test_under_load_with_every_provider_cached_rss_stays_under_the_manifests_limit(
    start_draco, paths, largest
):
    """draco's peak and its two exec probes' peaks, running at the same time, together
    stay under the container's memory limit."""
    cap = env_of(deployed_sidecar())["UPSTREAM_MAX_BYTES"]
    bodies = payloads()  # NordVPN: 6,300 servers, about 21 MB
    if largest:
        bodies["nordvpn"] = nordvpn_as_large_as(int(cap))
    fakes = {name: FakeUpstream(body) for name, body in bodies.items()}
    try:
        draco = start_draco(
            {**upstream_env(fakes), "RATE_LIMIT_ENABLED": "false", "UPSTREAM_MAX_BYTES": cap}
        )
        assert eventually(lambda: ready(draco).status_code == 200, 30)
        if paths == FILL:
            paths = filling(draco.base)
        with Probes(draco.port) as probes:
            requests = asyncio.run(load(draco.base, paths))
        peak = draco.rss_peak_kb()
    finally:
        for fake in fakes.values():
            fake.stop()
    limit = memory_limit_kib()
    together = peak + sum(probes.peaks_kib)
    print(
        f"peak RSS {peak / 1024:.1f} MiB after {requests} requests, with the exec probes "
        f"({probes.runs} pairs, {max(probes.peaks_kib) / 1024:.1f} MiB each at most) "
        f"{together / 1024:.1f} MiB; the manifest's limit {limit // 1024} MiB"
    )
    assert requests > 1000
    assert probes.runs > 0
    assert together < limit
