"""Faults under load (`make chaos`; not in `make test`: each kill waits for Ray Serve to bring a replica back).

A steady stream of requests runs while one replica is killed (`ray.kill`, as an OOM kill or a node loss
would). For each kill: the share of requests that failed, and the seconds from the kill until requests
succeed again on the path that lost its replica. Then the cache's store is restarted: every admitted entry
must come back. Figures go to reports/reliability/chaos.json (docs/reliability.md quotes one run).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.serve.conftest import Service, running

pytestmark = [pytest.mark.serve, pytest.mark.chaos]

REPORT = Path(__file__).resolve().parents[2] / "reports" / "reliability" / "chaos.json"
FIGURES: dict[str, dict] = {}


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    from serving.config import load_profile

    config = load_profile("tiny")
    config.cache.path = tmp_path_factory.mktemp("semantic-cache")
    config.api.default_max_tokens = 8
    config.cache.admit_truncated = True  # the short answers here stop at max_tokens
    # Two Validator replicas, as a deployment that must survive losing one has: the kill below takes one, and
    # the calls it held are sent again to the other (engine.replica_death_retries).
    config.validator.autoscaling = type(config.validator.autoscaling)(min_replicas=2, max_replicas=2)
    config.validator.num_cpus = 0.3
    with running(config) as service:
        yield service
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    earlier = json.loads(REPORT.read_text()) if REPORT.exists() else {}
    REPORT.write_text(json.dumps({**earlier, **FIGURES}, indent=2) + "\n")  # a partial run keeps the others


class Load:
    """Requests one after another from `threads` threads until stopped; each outcome with its time."""

    def __init__(self, svc: Service, model: str, threads: int = 2) -> None:
        self.svc, self.model = svc, model
        self.outcomes: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        with self.svc.client(timeout=120) as c:
            while not self._stop.is_set():
                body = {"model": self.model, "temperature": 0, "max_tokens": 8, "cache": {"mode": "bypass"},
                        "messages": [{"role": "user", "content": f"Say a word. {uuid.uuid4().hex[:6]}"}]}
                try:
                    status = c.post("/v1/chat/completions", json=body).status_code
                except httpx.HTTPError:
                    status = 0
                self.outcomes.append((time.monotonic(), status))

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(180)


def kill_replica(deployment: str) -> None:
    """Kill one replica of `deployment` for good (Serve's controller starts a new one)."""
    import ray

    actors = [a for a in ray.util.list_named_actors(all_namespaces=True)
              if f"#{deployment}#" in a["name"] and "REPLICA" in a["name"].upper()]
    assert actors, f"no {deployment} replica"
    ray.kill(ray.get_actor(actors[0]["name"], namespace=actors[0]["namespace"]), no_restart=True)


def _kill_under_load(svc: Service, deployment: str, model: str, settle_s: float = 10.0,
                     recover_within_s: float = 300.0) -> dict:
    with Load(svc, model) as load:
        time.sleep(settle_s)
        killed_at = time.monotonic()
        kill_replica(deployment)
        deadline = killed_at + recover_within_s
        recovered_at = None
        while time.monotonic() < deadline:
            time.sleep(1)
            after = [(t, s) for t, s in load.outcomes if t > killed_at]
            # Recovered: the last three requests finished after the kill all succeeded.
            if len(after) >= 3 and all(s == 200 for _, s in after[-3:]):
                recovered_at = after[-3][0]
                break
        time.sleep(3)
    statuses = Counter(s for _, s in load.outcomes)
    failed = sum(n for s, n in statuses.items() if s != 200)
    figures = {"requests": len(load.outcomes), "failed": failed,
               "failed_share": round(failed / max(1, len(load.outcomes)), 4),
               "statuses": {str(k): v for k, v in sorted(statuses.items())},
               "recovery_s": None if recovered_at is None else round(max(0.0, recovered_at - killed_at), 1)}
    FIGURES[f"kill_{deployment.lower()}"] = figures
    return figures


def test_kill_the_scout_replica_under_load(svc: Service):
    """'auto' requests: a dead Scout is a Scout failure, the Validator answers (and the breaker stops trying)."""
    figures = _kill_under_load(svc, "Scout", "auto")
    assert figures["recovery_s"] is not None and figures["failed_share"] < 0.01, figures


def test_kill_the_cache_replica_under_load(svc: Service):
    """A dead cache is bypassed; its replica comes back and reopens the store."""
    figures = _kill_under_load(svc, "SemanticCache", "auto")
    assert figures["recovery_s"] is not None and figures["failed_share"] < 0.01, figures


def test_kill_a_validator_replica_under_load(svc: Service):
    """Forced to the Validator, one of its two replicas killed: the calls it held go again to the other one, which
    answers while Serve starts a replacement (an engine's start-up, minutes on this machine, is not waited for)."""
    figures = _kill_under_load(svc, "Validator", "validator")
    assert figures["recovery_s"] is not None and figures["recovery_s"] < 30, figures
    assert figures["failed_share"] < 0.01, figures


def test_calls_in_flight_on_a_killed_validator_replica_are_answered_by_the_other(svc: Service):
    """Four long requests at once (prefix-aware routing tends to put them on one replica), then one Validator
    replica killed mid-generation: every call it held is sent again (engine.replica_death_retries), none fails."""
    import concurrent.futures

    from ray import serve

    deadline = time.monotonic() + 400  # after the kill above, until Serve has its second Validator replica again
    while time.monotonic() < deadline:
        states = serve.status().applications["infopt"].deployments["Validator"].replica_states
        if states.get("RUNNING", 0) >= 2:
            break
        time.sleep(5)

    def one(i: int) -> int:
        with svc.client(timeout=300) as c:
            return c.post("/v1/chat/completions", json={
                "model": "validator", "temperature": 0, "max_tokens": 64, "cache": {"mode": "bypass"},
                "messages": [{"role": "user", "content": f"Write a long story about ship {i} {uuid.uuid4().hex[:4]}."}],
            }).status_code

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(one, i) for i in range(4)]
        time.sleep(2.0)  # all four are generating
        kill_replica("Validator")
        statuses = Counter(f.result() for f in futures)
    FIGURES["kill_validator_mid_generation"] = {"in_flight": 4, "statuses": {str(k): v for k, v in statuses.items()}}
    assert statuses == {200: 4}, statuses


def test_every_admitted_entry_is_back_after_the_store_restarts(svc: Service):
    """Admit entries, kill the cache replica (its store never flushed or closed), and ask for every one again."""
    space = {"namespace": f"chaos-{uuid.uuid4().hex[:6]}"}
    questions = [f"What is {i} plus {i}?" for i in range(8)]
    with svc.client(timeout=120) as c:
        def ask(q: str) -> dict:
            r = c.post("/v1/chat/completions", json={"model": "validator", "temperature": 0, "max_tokens": 6,
                                                    "messages": [{"role": "user", "content": q}], "cache": space})
            assert r.status_code == 200, r.text
            return r.json()["route"]

        for q in questions:
            ask(q)
        before = sum(ask(q)["tier"] == "cache" for q in questions)
        kill_replica("SemanticCache")
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:  # until the new replica serves lookups again
            if ask(questions[0])["tier"] == "cache":
                break
            time.sleep(2)
        after = sum(ask(q)["tier"] == "cache" for q in questions)
    FIGURES["store_restart"] = {"admitted": len(questions), "hits_before": before, "hits_after": after}
    assert before == after == len(questions)
