"""The semantic cache end to end: real Ray Serve, real tiny models, real all-MiniLM-L6-v2, real qdrant-edge.

The tiny profile with its cache on, storing in a temporary folder, with an admin key, and
admitting answers cut by max_tokens (so that short, cheap generations are admitted). The
request analyzer is on too (it shares the Embedder): its plan is checked at the end.
"""

from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from serving.config import KeySource, key_digest
from tests.serve.conftest import Service, running, unexported

pytestmark = pytest.mark.serve

ADMIN = {"authorization": "Bearer test-admin-key"}


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    from serving.config import load_profile
    from serving.models import is_prepared

    config = load_profile("tiny")
    if not is_prepared(config.cache.embedder.model, config.cache_dir):
        pytest.skip("embedder not prepared: run `infopt models prepare --profile tiny`")
    config.cache.path = tmp_path_factory.mktemp("semantic-cache")
    config.auth.admin_keys = [KeySource(sha256=key_digest("test-admin-key"))]
    config.cache.admit_truncated = True
    config.analyzer.enabled = True
    config.tiering.verify_min_acceptance = 0.0  # near misses are always verified here
    # The audit is on but samples nothing (share 0): its kept state, seeded here, is what the live page and the
    # Grafana dashboard's audit panels read at start (a restarted replica exports what it kept).
    state = tmp_path_factory.mktemp("audit") / "audit.json"
    state.write_text(json.dumps({"calibration": "uncalibrated", "tightening": 0.0, "closed": False,
                                 "semantic_closed": [], "estimates": [
                                     {"path": "semantic", "namespace": "seeded", "n": 40, "k": 0, "since_change": 0}]}))
    config.quality.audit.enabled, config.quality.audit.share, config.quality.audit.state_path = True, 0.0, state
    with running(config) as service:
        yield service


def ns() -> dict:
    """A fresh namespace, so tests do not see each other's entries."""
    return {"namespace": f"t-{uuid.uuid4().hex[:8]}"}


def ask(client: httpx.Client, question: str, cache: dict | None = None, system: str | None = None,
        **body) -> httpx.Response:
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
    body = {"model": "validator", "messages": messages, "temperature": 0, "max_tokens": 6, **body}
    if cache is not None:
        body["cache"] = cache
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    return r


def path(body: dict) -> list[dict]:
    """The route's stages after the analyzer's (on in this module; its plan is tested at the end)."""
    return [s for s in body["route"]["stages"] if s["stage"] != "analyzer"]


def decisions(r: httpx.Response) -> list[tuple[str, str]]:
    return [(s["stage"], s["decision"]) for s in path(r.json())]


def test_exact_hit_serves_the_stored_answer_without_an_engine(client: httpx.Client):
    space = ns()
    first = ask(client, "What is the capital of France?", space)
    assert decisions(first) == [("cache", "miss"), ("validator", "answered"), ("admission", "admitted")]
    second = ask(client, "What is the capital of France?", space)
    assert second.headers["x-infopt-route"] == "cache" == second.json()["route"]["tier"]
    assert decisions(second) == [("cache", "exact_hit")]
    assert second.json()["choices"][0]["message"]["content"] == first.json()["choices"][0]["message"]["content"]
    assert second.json()["model"] == "qwen2.5-coder-0.5b-instruct"  # provenance: who wrote it
    entry = path(second.json())[0]["detail"]["entry"]
    assert entry["tier"] == "validator" and entry["hits"] >= 1


def test_paraphrase_is_a_semantic_hit(svc: Service, client: httpx.Client):
    space = ns()
    ask(client, "How do I reverse a list in Python?", space)
    r = ask(client, "How can I reverse a list in Python?", space)
    route = r.json()["route"]
    assert route["tier"] == "cache" and route["reason"] == "semantic", route
    # Served for being at least as similar as the threshold, and not the same text (that is an exact hit).
    assert svc.config.cache.similarity_threshold <= path(r.json())[0]["detail"]["similarity"] < 1.0


# Both pairs embed above the 0.95 threshold with all-MiniLM-L6-v2 (0.986 and 0.963).
@pytest.mark.parametrize(("cached", "asked", "guard"), [
    ("In Python, how do I sort a list of dictionaries by a key in ascending order?",
     "In Python, how do I sort a list of dictionaries by a key in descending order?", "opposite"),
    ("What is the time complexity of Python's list.sort for 1000 items?",
     "What is the time complexity of Python's list.sort for 5000 items?", "numbers"),
])
def test_opposite_meaning_and_different_numbers_are_misses(client: httpx.Client, cached: str, asked: str, guard: str):
    space = ns()
    ask(client, cached, space)
    r = ask(client, asked, space)
    cache_stage = path(r.json())[0]
    assert r.json()["route"]["tier"] == "validator" and cache_stage["decision"] == "miss"
    # The embedding alone would have served it: the guard is what said no.
    assert [g["reason"] for g in cache_stage["detail"]["guard_rejected"]] == [guard]
    # The vetoed answer is still a good draft: the Validator verifies it, and answers as it would alone.
    assert "near_miss" in cache_stage["detail"]
    validator = path(r.json())[1]
    assert validator["decision"] == "verified" and validator["detail"]["draft_source"] == "cache"
    alone = ask(client, asked, {"mode": "bypass"})
    assert r.json()["choices"][0]["message"]["content"] == alone.json()["choices"][0]["message"]["content"]


def test_a_near_miss_is_verified_by_the_validator_not_served(client: httpx.Client):
    """Similar (0.91 with all-MiniLM-L6-v2) but below the 0.95 serving threshold: a draft, never an answer."""
    space = ns()
    # Entries are per requested model: the first question is asked as 'auto' too (and escalated, so
    # that the Validator's answer is the one cached).
    first = ask(client, "How do I sort a dictionary by value in Python?", space, model="auto", max_tokens=24,
                confidence_threshold=1.0)
    assert first.json()["route"]["tier"] == "validator" and decisions(first)[-1] == ("admission", "admitted")
    asked = "How can I sort a Python dict by its values?"
    r = ask(client, asked, space, model="auto", max_tokens=24)
    route = r.json()["route"]
    cache_stage, scout, validator = path(r.json())[:3]
    assert cache_stage["decision"] == "miss" and 0.8 <= cache_stage["detail"]["near_miss"]["similarity"] < 0.95
    assert (scout["decision"], scout["detail"]["reason"]) == ("skipped", "near_miss_draft")
    assert validator["decision"] == "verified" and validator["detail"]["draft_source"] == "cache"
    assert route["tier"] == "validator" and route["reason"] == "near_miss"
    assert 0 <= validator["detail"]["accepted_tokens"] <= validator["detail"]["draft_tokens"]
    alone = ask(client, asked, {"mode": "bypass"}, max_tokens=24)
    assert r.json()["choices"][0]["message"]["content"] == alone.json()["choices"][0]["message"]["content"]
    # Streamed, the same near miss gives the same answer.
    events, text = [], ""
    with client.stream("POST", "/v1/chat/completions", json={
            "model": "auto", "messages": [{"role": "user", "content": asked}], "temperature": 0, "max_tokens": 24,
            "stream": True, "cache": {**space, "mode": "use"}}) as s:
        for line in s.iter_lines():
            if line.startswith("data: {"):
                ev = json.loads(line[6:])
                events.append(ev)
                for ch in ev.get("choices", []):
                    text += (ch.get("delta") or {}).get("content") or ""
    assert text == alone.json()["choices"][0]["message"]["content"]


def test_same_question_under_another_system_prompt_or_history_is_a_miss(client: httpx.Client):
    space = ns()
    q = "What is the capital of Italy?"
    ask(client, q, space, system="Answer in one word.")
    assert ask(client, q, space, system="Answer in one word.").json()["route"]["tier"] == "cache"
    assert ask(client, q, space, system="Answer in French.").json()["route"]["tier"] == "validator"
    history = [{"role": "user", "content": "Let us talk about Europe."}, {"role": "assistant", "content": "Sure."},
               {"role": "system", "content": "Answer in one word."}]
    r = client.post("/v1/chat/completions", json={
        "model": "validator", "temperature": 0, "max_tokens": 6, "cache": space,
        "messages": [*history, {"role": "user", "content": q}]})
    assert r.json()["route"]["tier"] == "validator"


def test_namespaces_are_isolated(client: httpx.Client):
    a, b = ns(), ns()
    ask(client, "Who wrote Hamlet?", a)
    assert ask(client, "Who wrote Hamlet?", b).json()["route"]["tier"] == "validator"
    assert ask(client, "Who wrote Hamlet?", a).json()["route"]["tier"] == "cache"


def test_ttl_expiry(client: httpx.Client):
    space = ns()
    ask(client, "What is the boiling point of water?", {**space, "ttl_s": 1})
    time.sleep(1.5)
    assert path(ask(client, "What is the boiling point of water?", space).json())[0]["decision"] == "miss"


def _stream(client: httpx.Client, body: dict) -> tuple[str, list[dict], httpx.Headers]:
    events, text = [], ""
    with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
        assert r.status_code == 200, r.read()
        headers = r.headers
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                ev = json.loads(line[6:])
                events.append(ev)
                for ch in ev.get("choices", []):
                    text += (ch.get("delta") or {}).get("content") or ""
    return text, events, headers


def test_streaming_miss_is_admitted_and_a_streaming_hit_is_replayed(client: httpx.Client):
    space = ns()
    body = {"model": "validator", "temperature": 0, "max_tokens": 12, "cache": space,
            "messages": [{"role": "user", "content": "Name three primary colors."}]}
    streamed, events, headers = _stream(client, body)
    assert headers["x-infopt-route"] == "validator"
    route = next(e["route"] for e in events if "route" in e)
    assert route["stages"][-1]["stage"] == "admission" and route["stages"][-1]["decision"] == "admitted"
    # The streamed answer was admitted whole: a non-streamed request hits it exactly.
    whole = client.post("/v1/chat/completions", json=body).json()
    assert whole["route"]["tier"] == "cache" and whole["choices"][0]["message"]["content"] == streamed
    replayed, events, headers = _stream(client, body)
    assert headers["x-infopt-route"] == "cache" and replayed == streamed
    content_events = [e for e in events if e.get("choices") and (e["choices"][0].get("delta") or {}).get("content")]
    assert len(content_events) > 1  # replayed as chunks, not one blob


def test_parallel_writers_lose_nothing(client: httpx.Client):
    space = ns()
    questions = [f"Spell the number {n} in words." for n in (3, 7, 12, 19, 42, 64)]
    with ThreadPoolExecutor(len(questions)) as pool:
        first = list(pool.map(lambda q: ask(client, q, space), questions))
    assert all(decisions(r)[-1] == ("admission", "admitted") for r in first)
    stats = client.get("/v1/cache/stats", headers=ADMIN).json()
    assert stats["namespaces"][space["namespace"]] == len(questions)
    for q, r in zip(questions, first, strict=True):
        again = ask(client, q, space)
        assert again.json()["route"]["tier"] == "cache"
        assert again.json()["choices"][0]["message"]["content"] == r.json()["choices"][0]["message"]["content"]


def test_sampled_requests_are_not_cached_unless_they_opt_in(client: httpx.Client):
    space = ns()
    r = ask(client, "Tell me a fun fact.", space, temperature=0.9)
    assert decisions(r)[0] == ("cache", "skipped")
    ask(client, "Tell me a fun fact.", {**space, "allow_sampled": True}, temperature=0.9)
    r = ask(client, "Tell me a fun fact.", {**space, "allow_sampled": True}, temperature=0.9)
    assert r.json()["route"]["tier"] == "cache"


def test_invalidation_and_stats_need_the_admin_key(client: httpx.Client):
    space = ns()
    ask(client, "What is the tallest mountain?", {**space, "tags": ["geo"]})
    ask(client, "What is the longest river?", space)
    assert client.get("/v1/cache/stats").status_code == 401
    assert client.delete("/v1/cache", params={"all": "true"}, headers={"authorization": "Bearer wrong"}
                         ).status_code == 401
    r = client.delete("/v1/cache", headers=ADMIN)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    assert client.delete("/v1/cache", params={"colour": "red"}, headers=ADMIN).status_code == 400
    assert client.delete("/v1/cache", params={"older_than_s": "soon"}, headers=ADMIN).status_code == 400
    r = client.delete("/v1/cache", params={"tag": "geo"}, headers=ADMIN)
    assert r.status_code == 200 and r.json()["deleted"] == 1
    assert ask(client, "What is the tallest mountain?", space).json()["route"]["tier"] == "validator"
    r = client.delete("/v1/cache", params=space, headers=ADMIN)
    assert r.json()["deleted"] == 2  # the river, and the mountain admitted again just now
    stats = client.get("/v1/cache/stats", headers=ADMIN).json()
    assert space["namespace"] not in stats["namespaces"]
    assert stats["backend"] == "EdgeStore" and stats["counters"]["admitted"] >= 3


def test_bad_cache_controls_are_400s(client: httpx.Client):
    for cache, param in (({"namespace": "has spaces"}, "cache.namespace"), ({"mode": "sometimes"}, "cache.mode"),
                         ({"ttl_s": 10**9}, "cache.ttl_s"), ({"colour": "red"}, "cache.colour")):
        r = client.post("/v1/chat/completions", json={
            "messages": [{"role": "user", "content": "hi"}], "temperature": 0, "cache": cache})
        assert r.status_code == 400, (cache, r.text)
        assert r.json()["error"]["param"] == param


def test_cache_metrics_are_exported(svc: Service, client: httpx.Client):
    space = ns()
    ask(client, "What is the capital of Spain?", space)
    ask(client, "What is the capital of Spain?", space)
    missing = unexported(svc, "ray_infopt_cache_events", 'event="admitted"', 'event="miss"', 'event="exact_hit"',
                         "ray_infopt_cache_lookup_ms", 'stage="cache"', 'stage="admission"', within_s=30)
    assert not missing, f"not exported: {missing}"


def test_cache_down_means_bypass_and_entries_survive_its_restart(client: httpx.Client):
    import ray

    space = ns()
    q = "What is the chemical symbol of gold?"
    before = ask(client, q, space)
    assert decisions(before)[-1] == ("admission", "admitted")
    cache_actors = [a for a in ray.util.list_named_actors(all_namespaces=True)
                    if "SemanticCache" in a["name"] and "REPLICA" in a["name"].upper()]
    assert len(cache_actors) == 1, cache_actors
    ray.kill(ray.get_actor(cache_actors[0]["name"], namespace=cache_actors[0]["namespace"]), no_restart=True)
    # While the cache is down or restarting, requests are still answered, and say why.
    seen = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        r = ask(client, q, space)
        seen.append(path(r.json())[0]["decision"])
        if seen[-1] == "exact_hit":
            break
        time.sleep(1)
    assert "bypass" in seen, seen
    # The replacement replica reopened the same store: the entry made before the kill is served.
    assert seen[-1] == "exact_hit", seen
    assert client.get("/healthz").json()["cache"] == "ok"


# -- the request analyzer (same app: it shares the Embedder with the cache) ----------------


def assert_follows_the_plan(route: dict, direct_threshold: float) -> None:
    """The analyzer's decision is the one its complexity and the configured threshold call for, and the
    route took it: past the threshold the Scout is skipped, below it the Scout's confidence decides."""
    plan = route["stages"][0]
    assert plan["stage"] == "analyzer" and plan["detail"]["threshold"] == direct_threshold, route
    scout = [s for s in route["stages"] if s["stage"] == "scout"]
    if plan["detail"]["complexity"] >= direct_threshold:
        assert plan["decision"] == "validator_direct", route
        assert [(s["decision"], s["detail"]["reason"]) for s in scout] == [("skipped", "predicted_hard")], route
        assert (route["tier"], route["reason"]) == ("validator", "validator_direct"), route
    else:
        assert plan["decision"] == "scout_first", route
        confident = route["confidence"] >= route["threshold"]
        assert [s["decision"] for s in scout] == ["confident" if confident else "escalate"], route
        assert route["tier"] == ("scout" if confident else "validator"), route


def test_the_analyzers_plan_is_in_the_route_and_hard_prompts_skip_the_scout(svc: Service, client: httpx.Client):
    direct_threshold = svc.config.analyzer.direct_threshold
    body = {"model": "auto", "temperature": 0, "max_tokens": 4, "cache": {"mode": "bypass"}}
    easy = client.post("/v1/chat/completions", json={**body, "messages": [
        {"role": "user", "content": "Say hi."}]}).json()
    plan = easy["route"]["stages"][0]
    assert_follows_the_plan(easy["route"], direct_threshold)
    assert plan["detail"]["prompt_tokens"] > 0 and plan["detail"]["priority"] == "interactive"
    # A GSM8K problem, sent as batch traffic: maths, and harder than a greeting by the trained model.
    hard = client.post("/v1/chat/completions", headers={"x-infopt-priority": "batch"}, json={**body, "messages": [
        {"role": "user", "content": "Natalia sold clips to 48 of her friends in April, and then she sold half as "
         "many clips in May. How many clips did Natalia sell altogether in April and May?"}]}).json()
    plan = hard["route"]["stages"][0]
    assert plan["detail"]["priority"] == "batch" and "math" in plan["detail"]["signals"]
    assert plan["detail"]["complexity"] > easy["route"]["stages"][0]["detail"]["complexity"]
    assert_follows_the_plan(hard["route"], direct_threshold)
    # With the cache on, its lookup reuses the analyzer's embedding (the request is embedded once).
    q = "Which is the largest ocean on Earth?"
    used = client.post("/v1/chat/completions", json={**body, "cache": {"namespace": "embed-once"},
                                                     "messages": [{"role": "user", "content": q}]}).json()
    stages = used["route"]["stages"]
    assert stages[0]["detail"]["model_version"] and stages[1]["stage"] == "cache", used["route"]
    assert stages[1]["decision"] == "miss" and stages[1]["detail"]["embedding"] == "analyzer", used["route"]


def test_an_unknown_priority_class_is_a_400(client: httpx.Client):
    r = client.post("/v1/chat/completions", headers={"x-infopt-priority": "urgent"},
                    json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert r.status_code == 400 and r.json()["error"]["param"] == "x-infopt-priority"


# -- seeing it: the live page, its data, the Grafana dashboard's queries ---------------------------------------


def test_the_live_pages_data_needs_the_admin_key_and_shows_the_window(client: httpx.Client):
    page = client.get("/dashboard")  # the page itself holds no data: served to anyone
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert client.get("/dashboard/uPlot.iife.min.js").status_code == 200
    missing = client.get("/dashboard/..%2Fpyproject.toml")
    assert missing.status_code == 404 and missing.json()["error"]["type"]
    refused = client.get("/v1/dashboard/state")
    assert refused.status_code == 401 and "error" in refused.json()
    state = client.get("/v1/dashboard/state", headers=ADMIN).json()
    # This module's requests: answered by the cache and the Validator, with latencies, TTFT and the ledger.
    assert state["window"]["requests"] > 10
    assert {"cache", "validator"} <= set(state["latency"])
    assert state["latency"]["cache"]["p50_ms"] < state["latency"]["validator"]["p50_ms"]
    assert state["latency"]["validator"]["ttft_p50_ms"] is not None
    assert sum(state["series"]["mix"]["cache"]) == state["latency"]["cache"]["requests"]
    assert state["window"]["validator_only_s"] >= state["window"]["validator_s"] > 0
    assert state["ledger"]["validator_s"] > 0 and state["cache"]["entries"] > 0
    assert {"path": "semantic", "namespace": "seeded", "audits": 40, "disagreements": 0} .items() <= \
        next(e for e in state["quality"]["estimates"] if e["namespace"] == "seeded").items()
    replicas = state["replicas"]["infopt"]
    assert {"Ingress", "Scout", "Validator", "SemanticCache", "Embedder"} <= set(replicas)
    assert all(states.get("RUNNING", 0) >= 1 for states in replicas.values()), replicas
    assert state["queue"]["limit"] >= 1 and state["queue"]["waiting"] >= 0


def test_every_grafana_query_reads_a_metric_the_service_exports(svc: Service, client: httpx.Client):
    import sys
    import threading

    from tests.conftest import REPO

    sys.path.insert(0, str(REPO / "scripts"))
    import grafana_dashboard

    # What some panels need first: a Scout answer (its confidence) and a vLLM prefix-cache hit (two Validator
    # requests sharing a long system prompt).
    r = client.post("/v1/chat/completions", json={"model": "scout", "max_tokens": 2, "cache": {"mode": "bypass"},
                                                  "messages": [{"role": "user", "content": "Say hi."}]})
    assert r.status_code == 200, r.text
    system = " ".join(f"Rule {i}: answer briefly, politely and precisely." for i in range(60))
    for question in ("What is 2 + 2?", "Name a color."):
        ask(client, question, {"mode": "bypass"}, system=system, max_tokens=1)
    names = sorted(grafana_dashboard.metric_names(grafana_dashboard.dashboard()))
    # Ray exports a gauge only while it is set again and again: vLLM sets its engine gauges (requests running
    # and waiting, KV-cache usage) at each engine step, so they are scraped while the engines work. Requests
    # keep them working while the endpoint is read; a metric counts as exported if any scrape had it.
    stop, seen, text = threading.Event(), set(), ""

    def work() -> None:
        with svc.client() as c:
            while not stop.is_set():
                ask(c, "Count from one to twenty.", {"mode": "bypass"}, max_tokens=24)

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and len(seen) < len(names):
            text = httpx.get(svc.metrics_url, timeout=10).text
            seen |= {n for n in names if f"\n{n}{{" in text}
            time.sleep(2)
    finally:
        stop.set()
        worker.join(timeout=120)
    missing = sorted(set(names) - seen)
    assert not missing, f"the Grafana dashboard reads metrics this service does not export: {missing}"


def test_the_live_page_draws_its_charts_in_a_real_browser(svc: Service, client: httpx.Client):
    """Headless Chromium from the system's packages loads the page (the admin key in the URL's fragment), runs
    its script and draws both charts with data; a screenshot goes to reports/dashboard.png."""
    import re
    import shutil
    import subprocess

    from tests.conftest import REPO

    browser = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    if browser is None:
        pytest.skip("no Chromium on this machine (Debian's package `chromium`; `make test` installs it where "
                    "apt-get may)")
    ask(client, "What is the capital of Spain?", ns())  # a request in the last minute at least
    url = f"{svc.base_url}/dashboard#key=test-admin-key"
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
             "--window-size=1100,1500", "--virtual-time-budget=15000"]
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    assert 'data-ready="1"' in dom, dom[-2000:]
    for chart in ("chart-mix", "chart-savings"):
        drawn = re.search(rf'id="{chart}"[^>]*data-drawn="(\d+)"', dom)
        assert drawn and int(drawn.group(1)) > 0, f"{chart} drew no data"
    assert dom.count("<canvas") >= 2  # uPlot draws on canvases
    assert re.search(r'id="t-requests">\d', dom)
    out = REPO / "reports" / "dashboard.png"
    out.parent.mkdir(exist_ok=True)
    subprocess.run([*flags, f"--screenshot={out}", url], capture_output=True, timeout=120)
    assert out.exists() and out.stat().st_size > 10_000


def test_the_validator_as_the_caches_cross_checker_reads_yes_and_no_from_a_real_engine(svc: Service):
    """`cache.verifier.model: validator` asks the real Validator deployment through its handle (what the cache
    replica holds): one token, whose alternatives carry "Yes" and "No", read into P(same question)."""
    import asyncio

    from ray import serve

    from serving.cache.verifier import EngineVerifier
    from serving.handles import ServeLLMEngine

    engine = ServeLLMEngine(serve.get_deployment_handle("Validator", app_name="infopt"),
                            svc.config.validator.served_name())
    verifier = EngineVerifier(engine, name="validator")
    same = ("How do I reverse a list in Python?", "How do I reverse a list in Python?")
    other = ("How do I reverse a list in Python?", "What is the boiling point of water at sea level?")
    scores = asyncio.run(verifier.score([same, other]))
    # Neither "Yes" nor "No" among the alternatives would be exactly 0.5: the model was read, not defaulted.
    assert all(0.0 <= s <= 1.0 and s != 0.5 for s in scores), scores
    assert scores[0] > scores[1], scores  # even the tiny Validator tells the same question from another one
