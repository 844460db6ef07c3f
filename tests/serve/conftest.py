"""Real Ray Serve, real small models (the tiny profile), on CPU.

One Ray and one deployment of the tiny profile per test module: starting two vLLM engines
takes a minute or two on 2 cores, so tests share them and each module cleans up after
itself (`serve.shutdown()` and `ray.shutdown()` in a finally).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from serving.config import AppConfig
from serving.models import is_prepared


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


def start_ray() -> int:
    """Start a local Ray; return the port its Prometheus metrics are served on."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        # A previous module's teardown left the driver connected (seen after the multi-node
        # cluster's): start clean rather than fail with "ray.init twice".
        ray.shutdown()
    metrics_port = free_port()
    ray.init(address="local", include_dashboard=False, log_to_driver=False, configure_logging=False,
             _metrics_export_port=metrics_port)
    return metrics_port


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
    import ray
    from ray import serve

    require_models(config)
    metrics_port = start_ray()
    try:
        service = deploy(config, free_port())
        service.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        yield service
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def client(svc: Service) -> Iterator[httpx.Client]:
    """An HTTP client of the module's service (each module defines `svc`)."""
    with svc.client() as c:
        yield c
