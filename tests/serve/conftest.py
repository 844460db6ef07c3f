"""Real Ray Serve, real small models (the tiny profile), on CPU.

One Ray and one deployment of the tiny profile per test module: starting two vLLM engines
takes a minute or two on 2 cores, so tests share them and each module cleans up after
itself (`stop_ray()` in a finally).

Starting Ray on a busy 2-core machine: Ray 2.60 gives a new node 30 s to start its GCS and
30 s for its raylet to register, and fails the start with "The current node timed out during
startup" after that; the raylet itself aborts when its dashboard agent has not written its
ports within 15 s. With other processes on the cores (the previous module's engines still
exiting, another build) all of these can run late, so every start here (`start_ray`,
`start_cluster`) waits longer where Ray lets it (`START_WAIT_S`, see `patient_start`), is tried
a second time after a clean stop when it still fails (`start_with_retry`), and comes after the
previous module's Ray and its processes are gone (`stop_ray`).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from serving.config import AppConfig
from serving.models import is_prepared

log = logging.getLogger(__name__)
T = TypeVar("T")

# How long a node may take to start (GCS up, raylet registered) before the attempt counts as failed.
START_WAIT_S = 180
# How long the previous module's Ray processes get to exit before they are ended.
STOP_WAIT_S = 60
# Start-up failures worth a second try (Ray raises a plain Exception for the raylet's timeout).
STARTUP_FAILURES = ("timed out", "timeout", "failed to start gcs", "failed to connect to gcs")
# Ray's own knob for the GCS start-up wait (30 s by default), read at each node start; Ray's
# RAY_<config name> variables are case-sensitive, so it stays in lower case.
GCS_WAIT_ENV = "RAY_gcs_server_port_wait_time_s"
# Serve's proxy must answer its first readiness check within 5 s, or the controller kills it
# (and serve.start fails with ActorDiedError: seen with the cores busy), and its health checks
# within 10 s. Read by the controller, a worker of the Ray started with them in its environment.
PATIENT_SERVE_ENV = {"RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "60", "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S": "30"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def require_models(config: AppConfig) -> None:
    for engine in (config.scout, config.validator):
        if not is_prepared(engine.model, config.cache_dir):
            pytest.skip(f"model {engine.model} not prepared: run `infopt models prepare --profile {config.profile}`")


@dataclass
class Service:
    """A running deployment of the app."""

    base_url: str
    config: AppConfig
    metrics_url: str = ""

    def client(self, timeout: float = 300.0) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=timeout)


def unexported(svc: Service, *wanted: str, within_s: float = 90) -> list[str]:
    """The `wanted` fragments still missing from Ray's Prometheus endpoint after up to `within_s`
    (metrics are pushed late, so it polls); empty when all appeared."""
    deadline, text = time.monotonic() + within_s, ""
    while True:
        text = httpx.get(svc.metrics_url, timeout=10).text
        missing = [w for w in wanted if w not in text]
        if not missing or time.monotonic() >= deadline:
            return missing
        time.sleep(3)


# -- starting and stopping Ray ------------------------------------------------------------


def is_startup_failure(exc: BaseException) -> bool:
    """Whether `exc` is Ray failing to bring a node up in time (worth one more try), not a usage error."""
    return isinstance(exc, TimeoutError | ConnectionError) or any(s in str(exc).lower() for s in STARTUP_FAILURES)


@contextmanager
def patient_start(wait_s: float = START_WAIT_S, retry_every_s: float = 0.5) -> Iterator[None]:
    """Ray node starts in this block wait up to `wait_s` for the GCS and for the raylet to register,
    and the Ray they start gives Serve's proxy longer to start (`PATIENT_SERVE_ENV`).

    The GCS wait is Ray's own knob, `RAY_gcs_server_port_wait_time_s` (`GCS_WAIT_ENV`). The
    raylet's is not a knob in Ray 2.60: `Node.__init__` polls `ray._private.services.get_node`
    and gives up 30 s after the raylet started (`raylet_start_wait_time_s = 30`, a literal;
    test_ray_start.py fails if that code changes). So `get_node` itself retries here: Ray's
    first call returns the node as soon as the raylet registers, if within `wait_s`, or
    fails after that (and Ray's loop, past its 30 s, raises its timeout).

    A raylet that exited will never register: then it fails at once, for `start_with_retry` to
    try again. That is how a busy machine usually fails a start: the raylet gives the dashboard
    agent (a Python process it spawns) 15 s to write its port files and aborts when it is late
    ("Check failed: ... Timed out waiting for file .../metrics_agent_port_..." in raylet.out); no
    Ray 2.60 setting changes that 15 s (RAY_agent_register_timeout_ms and
    RAY_raylet_start_wait_time_s do not; tried).
    """
    import ray._private.services as services

    original = services.get_node

    def get_node(gcs_address: str, node_id: str) -> Any:
        started = time.monotonic()
        misses = 0
        # Found before the first call: a call can take longer than the raylet lives (GCS RPCs time out
        # slowly on a busy machine), and an exited raylet can no longer be told by its command line.
        raylet = RayletWatch(node_id)
        while True:
            try:
                node = original(gcs_address, node_id)
            except RuntimeError:  # what Ray's loop catches: "node not found" (yet)
                if time.monotonic() - started >= wait_s or raylet.exited():
                    time.sleep(retry_every_s)  # Ray's loop calls again at once until its 30 s are up
                    raise
                misses += 1
                time.sleep(retry_every_s)
                continue
            if misses:  # shown with a failing test's log: how close the start came to Ray's 30 s
                log.info("the raylet registered after %.1f s", time.monotonic() - started)
            return node

    # Set for the start only (Ray's processes keep the environment they started with); an explicit
    # setting wins.
    added = {k: v for k, v in {GCS_WAIT_ENV: str(int(wait_s)), **PATIENT_SERVE_ENV}.items() if k not in os.environ}
    os.environ.update(added)
    services.get_node = get_node
    try:
        yield
    finally:
        services.get_node = original
        for key in added:
            os.environ.pop(key, None)


class RayletWatch:
    """Whether the raylet of `node_id` (one of this process's descendants) has exited since it was found."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.process, cmdline = find_raylet(node_id)
        # Where it logs: its fatal line says why it exited.
        self.out = next((a.split("=", 1)[1] for a in cmdline if a.startswith("--stdout_filepath=")), None)
        self.reported = False

    def exited(self) -> bool:
        import psutil

        if self.process is None:  # not ours, or not found: nothing to tell, keep waiting
            return False
        try:
            alive = self.process.is_running() and self.process.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            alive = False
        if not alive and not self.reported:
            self.reported = True
            log.warning("the raylet of node %s exited during start-up: %s", self.node_id, self.why())
        return not alive

    def why(self) -> str:
        """The raylet's last fatal log line (raylet.out), else its last line."""
        if self.out is None:
            return "no raylet.out"
        try:
            lines = Path(self.out).read_text(errors="replace").splitlines()
        except OSError as exc:
            return f"raylet.out unreadable ({exc})"
        fatal = [line[line.find("Check failed"):] for line in lines if "Check failed" in line]
        return (fatal or lines or ["raylet.out is empty"])[-1][:400]


def find_raylet(node_id: str) -> tuple[Any, list[str]]:
    """This process's raylet process for `node_id` (psutil) and its command line, or (None, [])."""
    import psutil

    for proc in own_processes():
        try:
            if proc.name() != "raylet":
                continue
            cmdline = proc.cmdline()
        except psutil.Error:
            continue
        if f"--node_id={node_id}" in cmdline:
            return proc, cmdline
    return None, []


def own_processes() -> set[Any]:
    """This process's descendants (Ray's GCS, raylets, workers and what they started)."""
    import psutil

    return set(psutil.Process().children(recursive=True))


def end_processes(procs: set[Any], wait_s: float = STOP_WAIT_S) -> None:
    """Give `procs` (ours) `wait_s` to exit on their own, then terminate, then kill what is left."""
    import psutil

    if not procs:
        return
    _, alive = psutil.wait_procs(list(procs), timeout=wait_s)
    for sig in ("terminate", "kill"):
        if not alive:
            return
        log.warning("ending %d leftover Ray process(es) (%s): %s", len(alive), sig,
                    ", ".join(f"{p.pid}" for p in alive))
        for p in alive:
            with suppress(psutil.NoSuchProcess):  # it exited meanwhile
                getattr(p, sig)()
        _, alive = psutil.wait_procs(alive, timeout=10)


def stop_ray(cluster: Any = None, wait_s: float = STOP_WAIT_S) -> None:
    """Serve, the driver's Ray and `cluster` (a `ray.cluster_utils.Cluster`) stopped, and their processes gone.

    `ray.shutdown()` alone returns before the raylet and GCS have exited (and a multi-node
    `Cluster` is not the driver's to stop): the next module's start would then share the cores
    with a cluster still going down.
    """
    import ray
    from ray import serve

    try:
        if ray.is_initialized():
            serve.shutdown()
    finally:
        ray.shutdown(wait_for_processes=True)
        try:
            if cluster is not None:
                cluster.shutdown()
        finally:
            ray.shutdown()  # idempotent; no driver connection is left to the next start
            end_processes(own_processes(), wait_s)


def start_with_retry(start: Callable[[], T], undo: Callable[[], None] | None = None, attempts: int = 2) -> T:
    """`start()` inside `patient_start()`; a start-up timeout gets `attempts - 1` more tries.

    After every failed try, `undo()` and `stop_ray()`, which also ends the processes the try left (a
    node that failed in its constructor is nobody's to stop), so a retry starts clean and a failure
    leaves nothing running. Errors other than start-up timeouts, and the last try's, propagate.
    """
    for attempt in range(1, attempts + 1):
        try:
            with patient_start():
                return start()
        except Exception as exc:
            for cleanup in (undo, lambda: stop_ray(wait_s=10)):
                try:
                    if cleanup is not None:
                        cleanup()
                except Exception:  # logged: the start's own error is the one to report
                    log.exception("cleaning up after a failed Ray start")
            if attempt >= attempts or not is_startup_failure(exc):
                raise
            log.warning("Ray did not start (attempt %d of %d): %s; stopped it cleanly, trying again",
                        attempt, attempts, exc)
    raise AssertionError("unreachable: the last attempt returns or raises")


def start_ray() -> int:
    """Start a local Ray (after stopping any left over); return the port its Prometheus metrics are served on."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # A previous module's teardown may have left the driver connected (seen after the multi-node
    # cluster's) or its processes still exiting: start clean.
    stop_ray()
    metrics_port = free_port()
    start_with_retry(lambda: ray.init(address="local", include_dashboard=False, log_to_driver=False,
                                      configure_logging=False, _metrics_export_port=metrics_port))
    return metrics_port


def start_cluster(head_args: dict[str, Any], *workers: dict[str, Any]) -> tuple[Any, list[Any]]:
    """A `ray.cluster_utils.Cluster` with a head (`head_args`) and one node per `workers` entry, the driver
    connected to it; started like `start_ray` (patiently, retried once). Returns it and the worker nodes."""
    import ray
    from ray.cluster_utils import Cluster

    stop_ray()
    clusters: list[Any] = []

    def start() -> tuple[Any, list[Any]]:
        cluster = Cluster()
        clusters.append(cluster)
        # Cluster.add_node(wait=True) waits 30 s for the node to show up in the GCS; wait longer.
        cluster._wait_for_node(cluster.add_node(wait=False, **head_args), timeout=START_WAIT_S)
        nodes = [cluster.add_node(wait=False, **w) for w in workers]
        for node in nodes:
            cluster._wait_for_node(node, timeout=START_WAIT_S)
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        return cluster, nodes

    def undo() -> None:
        if clusters:
            stop_ray(clusters.pop(), wait_s=10)

    return start_with_retry(start, undo)


# -- the app --------------------------------------------------------------------------------


def deploy(config: AppConfig, port: int, app_builder: Any = None) -> Service:
    """Run the app for `config` on `port` and wait until /healthz answers."""
    from ray import serve

    from deployments.app import build_app

    serve.start(http_options={"host": "127.0.0.1", "port": port})
    builder = app_builder or build_app
    serve.run(builder(config.model_dump(mode="json")), name="infopt", route_prefix="/")
    service = Service(f"http://127.0.0.1:{port}", config)
    deadline = time.monotonic() + 120
    with service.client(timeout=30) as c:
        while time.monotonic() < deadline:
            try:
                if c.get("/healthz").status_code == 200:
                    return service
            except httpx.HTTPError:
                pass
            time.sleep(1)
    raise RuntimeError("the service did not become healthy")


@contextmanager
def running(config: AppConfig) -> Iterator[Service]:
    """Ray, the app for `config` and its metrics endpoint for the length of a test module; all torn down after."""
    require_models(config)
    metrics_port = start_ray()
    try:
        service = deploy(config, free_port())
        service.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        yield service
    finally:
        stop_ray()


@pytest.fixture(scope="module")
def client(svc: Service) -> Iterator[httpx.Client]:
    """An HTTP client of the module's service (each module defines `svc`)."""
    with svc.client() as c:
        yield c
