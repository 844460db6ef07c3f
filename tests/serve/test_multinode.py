"""A real two-node Ray cluster on one machine: placement by custom resource, and autoscaling.

A Ray head and a second Ray node (its own raylet process, started by `ray.cluster_utils.Cluster`)
that advertises the custom resource `infopt_gpu_node`, standing in for a GPU machine. The tiny
profile is deployed the way `serve run cluster/tiny.yaml` deploys a profile (a Serve config:
`args` plus the `deployments:` block `serve build` makes of them, built by the controller), with
the Validator pinned to that resource (`validator.resources`). We check which node its replica
and its placement group landed on and that it answers.

Scaling: autoscaling a vLLM engine here would mean starting a second engine on a 2-core machine
(minutes, and the cores are shared with the first), so the light Embedder is autoscaled instead,
with a fast config (1 s look-back, 1 s upscale and 2 s downscale delay): sustained load from
concurrent calls scales it to its maximum and no further, and it returns to its minimum when
the load stops. The engines' autoscaling config goes through the same code (see test_cluster.py).

The Validator's cascade autoscaling runs live too, without a second engine: the application's
policy (`CascadeApplicationPolicy`, in the Serve config as the profiles carry it) reads the
Ingress's measurements and asks for a second Validator replica under load, which stays
unplaced (the custom resource is taken), and gives it back when the load stops. The Embedder's
adaptive batching is watched under a load ramp: its `@serve.batch` wait follows the arrival rate.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import httpx
import pytest

from tests.serve.conftest import free_port, require_models, start_cluster, stop_ray

pytestmark = pytest.mark.serve

T = TypeVar("T")
PIN = "infopt_gpu_node"
EMBEDDER_MIN, EMBEDDER_MAX = 1, 2
VALIDATOR_MAX = 2
EMBEDDER_MAX_WAIT_S = 0.05
# How often replicas and handles push their load to the controller. Ray 2.60 pushes at the
# deployment's `autoscaling_config.metrics_interval_s` (default 10 s), not at the
# RAY_SERVE_*_AUTOSCALING_METRIC_PUSH_INTERVAL_S variables its deprecation note names: with a 1 s
# look-back, a 10 s push leaves the controller without fresh samples 9 s in 10, and its decision
# flickered (CI saw a second replica asked for, then dropped before it started).
METRICS_INTERVAL_S = 0.5
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0"}


def profile_config(tmp_path: Any) -> dict[str, Any]:
    """The tiny profile as a Serve config, with the Validator pinned and the Embedder fast to scale."""
    import render_configs

    from serving.config import CascadeAutoscalingConfig, load_profile
    from serving.models import is_prepared

    config = load_profile("tiny")
    require_models(config)
    if not is_prepared(config.cache.embedder.model, config.cache_dir):
        pytest.skip("embedder not prepared: run `infopt models prepare --profile tiny`")
    config.validator.resources = {PIN: 1}
    config.cache.path = tmp_path / "semantic-cache"
    a = config.cache.embedder.deployment.autoscaling
    a.min_replicas, a.max_replicas, a.target_ongoing_requests = EMBEDDER_MIN, EMBEDDER_MAX, 2
    a.look_back_period_s, a.upscale_delay_s, a.downscale_delay_s = 1.0, 1.0, 2.0
    # A batch may wait up to 50 ms: the adaptive wait moves between 0 (below 20 arrivals/s) and that.
    config.cache.embedder.batch_wait_timeout_s = EMBEDDER_MAX_WAIT_S
    # The Validator scales by the cascade: forecast front-door arrivals x misses x Validator share x
    # its time. Its own request-based target is out of reach, so only the cascade policy can scale it;
    # a second replica would need a second `PIN`, which no node has: it is asked for, never started.
    v = config.validator.autoscaling
    v.min_replicas, v.max_replicas, v.target_ongoing_requests = 1, VALIDATOR_MAX, 1000
    v.look_back_period_s, v.upscale_delay_s, v.downscale_delay_s = 1.0, 1.0, 1.0
    load = config.load
    load.interval_s = 1.0
    load.autoscaling = CascadeAutoscalingConfig(
        enabled=True, target_ongoing_requests=0.5, horizon_s=2.0, downscale_delay_s=1.0, headroom_sigmas=0.0)
    args = config.model_dump(mode="json")
    return {
        "proxy_location": "HeadOnly",  # both nodes share this host: one proxy, one port
        "http_options": {"host": "127.0.0.1", "port": free_port()},
        "applications": [{
            "name": "infopt", "route_prefix": "/", "import_path": "deployments.app:build_app",
            "args": args, "deployments": fast_metrics(render_configs.serve_build(args)),
            "autoscaling_policy": render_configs.autoscaling_policy(args),
        }],
    }


def fast_metrics(deployments: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`deployments` with every autoscaled one pushing its load every `METRICS_INTERVAL_S`."""
    for d in deployments:
        if d.get("autoscaling_config"):
            d["autoscaling_config"]["metrics_interval_s"] = METRICS_INTERVAL_S
    return deployments


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[dict[str, Any]]:
    import sys

    from ray.serve._private.api import serve_start
    from ray.serve.schema import ServeDeploySchema

    from tests.conftest import REPO

    sys.path.insert(0, str(REPO / "scripts"))
    doc = profile_config(tmp_path_factory.mktemp("multinode"))
    saved = {k: os.environ.get(k) for k in RAY_ENV}
    os.environ.update(RAY_ENV)
    cluster = None
    try:
        # The head, and the stand-in GPU node: one CPU and the custom resource, nothing else fits the
        # Validator. Started patiently and retried once, like every Ray start of the suite (conftest).
        cluster, (worker,) = start_cluster(
            {"num_cpus": 2, "include_dashboard": False, "object_store_memory": 200 * 1024**2},
            {"num_cpus": 1, "resources": {PIN: 1}, "object_store_memory": 200 * 1024**2})
        config = ServeDeploySchema.model_validate(doc)
        client = serve_start(http_options=config.http_options.model_dump(), proxy_location=config.proxy_location)
        client.deploy_apps(config)  # what `serve run cluster/<profile>.yaml` does with a config
        base_url = f"http://127.0.0.1:{doc['http_options']['port']}"
        wait_healthy(base_url, timeout_s=240)
        yield {"base_url": base_url, "head": cluster.head_node.node_id, "worker": worker.node_id}
    finally:
        # The driver's handles push autoscaling metrics from a background thread; if one fires
        # after ray.shutdown() it auto-connects Ray again (to this cluster's head), and
        # cluster.shutdown() then refuses to remove the node the driver is connected to.
        # Ray reads RAY_ENABLE_AUTO_CONNECT once at import, so the switch is set on the module.
        from ray._private import auto_init_hook

        auto_init_hook.enable_auto_connect = False  # left off: later modules call ray.init themselves
        try:
            # Serve, the driver, both nodes and their processes: gone before the next module starts Ray.
            stop_ray(cluster)
        finally:
            for k, v in saved.items():
                os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def wait_healthy(base_url: str, timeout_s: float) -> None:
    from ray import serve

    deadline, last = time.monotonic() + timeout_s, "no answer"
    with httpx.Client(base_url=base_url, timeout=30) as c:
        while time.monotonic() < deadline:
            try:
                r = c.get("/healthz")
                if r.status_code == 200:
                    return
                last = r.text
            except httpx.HTTPError as e:
                last = repr(e)
            time.sleep(1)
    raise RuntimeError(f"the two-node deployment did not become healthy: {last}; {serve.status()}")


def replica_nodes(deployment: str) -> list[str]:
    """Node IDs of the live replica actors of `deployment` (from the GCS actor table)."""
    import ray

    return [a["Address"]["NodeID"] for a in ray._private.state.actors().values()
            if a["State"] == "ALIVE" and a.get("Name", "").startswith(f"SERVE_REPLICA::infopt#{deployment}#")]


def target_replicas(deployment: str) -> int:
    """Replicas Serve is keeping for `deployment` in any state (a replica it cannot place stays STARTING)."""
    from ray import serve

    return sum(serve.status().applications["infopt"].deployments[deployment].replica_states.values())


def replica_states(deployment: str = "Embedder") -> dict[str, int]:
    from ray import serve

    return dict(serve.status().applications["infopt"].deployments[deployment].replica_states)


def running_replicas(deployment: str) -> int:
    from ray import serve
    from ray.serve._private.common import ReplicaState

    status = serve.status().applications["infopt"].deployments[deployment]
    return status.replica_states.get(ReplicaState.RUNNING, 0)


def test_validator_is_placed_on_the_node_with_the_custom_resource(cluster):
    import ray

    assert cluster["head"] != cluster["worker"]
    assert replica_nodes("Validator") == [cluster["worker"]]
    # Its placement group (where ray.serve.llm starts the engine) is on that node too...
    groups = [g for g in ray.util.placement_group_table().values()
              if g["state"] == "CREATED" and "Validator" in g.get("name", "")]
    assert len(groups) == 1
    assert set(groups[0]["bundles_to_node_id"].values()) == {cluster["worker"]}
    assert groups[0]["bundles"][0][PIN] == 1
    # ...and nothing else asked for it, so the Scout stayed off the stand-in GPU node's resource.
    assert all(PIN not in g["bundles"][0] for g in ray.util.placement_group_table().values()
               if g["state"] == "CREATED" and "Scout" in g.get("name", ""))


def test_a_request_is_answered_across_nodes(cluster):
    with httpx.Client(base_url=cluster["base_url"], timeout=240) as c:
        r = c.post("/v1/chat/completions", json={
            "model": "validator", "temperature": 0, "max_tokens": 8, "cache": {"mode": "bypass"},
            "messages": [{"role": "user", "content": "What is the capital of France?"}]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["route"]["tier"] == "validator"
    assert body["choices"][0]["message"]["content"].strip()


@contextmanager
def sustained(call: Callable[[], None], callers: int = 2, join_s: float = 240) -> Iterator[None]:
    """`callers` threads run `call` over and over while the block runs; a caller's error fails the test."""
    stop, errors = threading.Event(), []

    def loop() -> None:
        try:
            while not stop.is_set():
                call()
        except Exception as exc:  # surfaced when the block ends: an assert in a thread fails nothing
            errors.append(exc)

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(callers)]
    for t in threads:
        t.start()
    try:
        yield
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=join_s)
    if errors:
        raise errors[0]


def poll(value: Callable[[], T], done: Callable[[T], bool], timeout_s: float, every_s: float = 0.5) -> list[T]:
    """Read `value` every `every_s` until `done` holds or `timeout_s` passes; every reading, last one last."""
    seen, deadline = [value()], time.monotonic() + timeout_s
    while not done(seen[-1]) and time.monotonic() < deadline:
        time.sleep(every_s)
        seen.append(value())
    return seen


def test_embedder_scales_up_within_bounds_under_load_then_down(cluster):
    from ray import serve

    handle = serve.get_deployment_handle("Embedder", app_name="infopt")
    assert running_replicas("Embedder") == EMBEDDER_MIN

    def load() -> None:
        # 16 calls in flight per caller: 8x the target of 2 ongoing requests per replica.
        for r in [handle.embed.remote(f"question number {i} about load") for i in range(16)]:
            r.result(timeout_s=60)

    try:
        with sustained(load):
            # The autoscaler's decision first (replicas in any state), then the new replica running.
            # Two reads because on a loaded machine starting a replica (a process that loads the
            # embedding model) can take minutes: CI once saw no RUNNING second replica within 90 s.
            wanted = poll(lambda: target_replicas("Embedder"), lambda n: n >= EMBEDDER_MAX, 120)
            assert wanted[-1] == EMBEDDER_MAX, f"no scale-up asked for under load (replicas seen: {wanted})"
            seen = poll(lambda: running_replicas("Embedder"), lambda n: n >= EMBEDDER_MAX, 240, every_s=1)
            assert seen[-1] == EMBEDDER_MAX, (
                f"the second replica was asked for but never ran (running: {seen}, states: {replica_states()})")
            # Well above target for a while longer: still capped at max_replicas.
            for _ in range(6):
                time.sleep(0.5)
                assert running_replicas("Embedder") <= EMBEDDER_MAX
        seen = poll(lambda: target_replicas("Embedder"), lambda n: n <= EMBEDDER_MIN, 180, every_s=1)
        assert seen[-1] == EMBEDDER_MIN, f"no scale-down after the load stopped (replicas seen: {seen})"
    finally:
        handle.shutdown()  # stops the handle's metrics pusher: it must not outlive the Ray connection


def test_validator_scales_by_the_forecast_cascade_load(cluster):
    """The application's cascade policy, live: the Ingress reports its measurements
    (`record_autoscaling_stats`), Ray's controller runs `CascadeApplicationPolicy` on them, and
    the Validator is asked for a second replica under load and given back its one after."""
    # Quiet first: the earlier tests' few requests may have had the policy ask for a second replica.
    seen = poll(lambda: target_replicas("Validator"), lambda n: n <= 1, 120, every_s=1)
    assert seen[-1] == 1, f"the Validator did not settle at one replica while quiet (seen: {seen})"

    with httpx.Client(base_url=cluster["base_url"], timeout=240) as c:
        def ask() -> None:
            r = c.post("/v1/chat/completions", json={
                "model": "validator", "temperature": 0, "max_tokens": 4, "cache": {"mode": "bypass"},
                "messages": [{"role": "user", "content": "Name a prime number."}]})
            assert r.status_code == 200, r.text

        with sustained(ask):
            seen = poll(lambda: target_replicas("Validator"), lambda n: n >= VALIDATOR_MAX, 90)
            # Two callers keep ~2 Validator requests in flight: far below its request-based target
            # (1000), above the cascade's (0.5 per replica). Only the cascade policy asks for more.
            assert seen[-1] == VALIDATOR_MAX, f"no cascade scale-up (replicas seen: {seen})"
    # The replica it asked for cannot be placed (one PIN, in use), so the Validator that answers is the first.
    assert running_replicas("Validator") == 1
    seen = poll(lambda: target_replicas("Validator"), lambda n: n <= 1, 120, every_s=1)
    assert seen[-1] == 1, "no scale-down after the arrivals stopped"


def test_embedder_batching_follows_the_arrival_rate(cluster):
    """The batch optimizer on a live replica: under a load ramp (quiet, sparse calls, a burst, quiet
    again) the `@serve.batch` wait Ray Serve applies moves with the measured arrival rate."""
    from ray import serve

    handle = serve.get_deployment_handle("Embedder", app_name="infopt")

    def state() -> dict[str, float]:
        return handle.batching_state.remote().result(timeout_s=30)

    def sparse() -> dict[str, float]:
        time.sleep(8)  # four half-lives of the rate estimate: what came before has faded
        for i in range(8):  # ~4 calls/s: nobody else arrives within a 50 ms wait
            handle.embed.remote(f"a lone question {i}").result(timeout_s=60)
            time.sleep(0.25)
        return state()

    def burst() -> None:
        for r in [handle.embed.remote(f"burst question {i}") for i in range(16)]:
            r.result(timeout_s=60)

    try:
        quiet = sparse()
        assert quiet["batch_wait_timeout_s"] == 0.0, quiet  # low load: a lone request is not held back
        with sustained(burst):
            busy = poll(state, lambda s: s["batch_wait_timeout_s"] > 0, 30, every_s=1)
        # High load: the replica sees more than 20 arrivals/s and waits (at most the ceiling) to fill batches.
        assert busy[-1]["arrival_rate"] > 1 / EMBEDDER_MAX_WAIT_S, busy
        assert 0 < busy[-1]["batch_wait_timeout_s"] <= EMBEDDER_MAX_WAIT_S, busy
        assert sparse()["batch_wait_timeout_s"] == 0.0  # and back when the load drops
    finally:
        handle.shutdown()
