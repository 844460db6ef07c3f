"""The tiered app end to end: real Ray Serve, real tiny models (SmolLM2-135M -> Qwen2.5-Coder-0.5B), CPU.

The tiny profile runs float32 + eager with greedy decoding, so each model's text and
logprobs are reproducible and the routing decisions below are the models' own.
"""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

from tests.serve.conftest import Service, running, unexported

pytestmark = pytest.mark.serve

# The Validator gets a short timeout here so that the timeout test is quick; every other
# Validator request in this module asks for few tokens and finishes well within it.
VALIDATOR_TIMEOUT_S = 25.0
CAPITAL = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def svc():
    from serving.config import load_profile

    config = load_profile("tiny")
    config.validator.request_timeout_s = VALIDATOR_TIMEOUT_S
    # Routing is tested here without the cache (its repeats would be cache hits); the cache
    # has its own module, test_cache_app.py.
    config.cache.enabled = False
    # Every escalation verifies here (the property tests need it): the tiny pair's drafts are
    # rarely accepted, so by default verification would pause after a few (tiering.verify_min_acceptance).
    config.tiering.verify_min_acceptance = 0.0
    with running(config) as service:
        yield service


@pytest.fixture(scope="module")
def sdk(svc: Service) -> openai.OpenAI:
    return openai.OpenAI(base_url=svc.base_url + "/v1", api_key="unused", max_retries=0, timeout=300)


def chat(client: httpx.Client, **body) -> httpx.Response:
    body.setdefault("messages", CAPITAL)
    body.setdefault("temperature", 0)
    body.setdefault("max_tokens", 24)
    return client.post("/v1/chat/completions", json=body)


def stream_text(client: httpx.Client, path: str, body: dict) -> tuple[str, list[dict], httpx.Headers]:
    events, text = [], ""
    with client.stream("POST", path, json={**body, "stream": True}) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        headers = r.headers
        for line in r.iter_lines():
            if not line:
                continue
            assert line.startswith("data: ")
            if line == "data: [DONE]":
                break
            ev = json.loads(line[6:])
            events.append(ev)
            for ch in ev.get("choices", []):
                text += (ch.get("delta") or {}).get("content") or ch.get("text") or ""
    return text, events, headers


# -- the OpenAI SDK, unchanged -----------------------------------------------------------


def test_openai_sdk_chat(sdk: openai.OpenAI):
    out = sdk.chat.completions.create(model="auto", messages=CAPITAL, temperature=0, max_tokens=24)
    assert "Paris" in out.choices[0].message.content
    assert out.usage.completion_tokens > 0
    route = out.model_extra["route"]
    # The request of test_unsure_scout_escalates, through the SDK: greedy fp32, so the same Scout answer,
    # confidence below the threshold, and the Validator's answer.
    assert (route["tier"], route["reason"]) == ("validator", "escalated"), route
    assert_consistent(route)
    assert out.model == "qwen2.5-coder-0.5b-instruct"


def test_openai_sdk_completion(sdk: openai.OpenAI):
    out = sdk.completions.create(model="validator", prompt="def add(a, b):\n    return", temperature=0, max_tokens=8)
    assert "a + b" in out.choices[0].text or "a+b" in out.choices[0].text
    assert out.model == "qwen2.5-coder-0.5b-instruct"


def test_openai_sdk_stream_and_models(sdk: openai.OpenAI):
    pieces = [c.choices[0].delta.content or "" for c in sdk.chat.completions.create(
        model="validator", messages=CAPITAL, temperature=0, max_tokens=16, stream=True) if c.choices]
    assert "Paris" in "".join(pieces)
    ids = [m.id for m in sdk.models.list().data]
    assert {"auto", "scout", "validator", "smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"} <= set(ids)


def test_openai_sdk_stream_with_include_usage(sdk: openai.OpenAI):
    chunks = list(sdk.chat.completions.create(model="validator", messages=CAPITAL, temperature=0, max_tokens=8,
                                              stream=True, stream_options={"include_usage": True}))
    # OpenAI's shape: the usage arrives once, in a last chunk with no choices, and adds up.
    with_usage = [c for c in chunks if c.usage is not None]
    assert len(with_usage) == 1 and with_usage[0] is chunks[-1] and chunks[-1].choices == []
    usage = chunks[-1].usage
    assert 0 < usage.completion_tokens <= 8 and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_openai_sdk_raises_typed_errors(sdk: openai.OpenAI):
    with pytest.raises(openai.NotFoundError):
        sdk.chat.completions.create(model="gpt-17", messages=CAPITAL)
    with pytest.raises(openai.BadRequestError) as info:
        sdk.chat.completions.create(model="auto", messages=CAPITAL, max_tokens=100_000)
    assert info.value.body["param"] == "max_tokens"
    with pytest.raises(openai.BadRequestError):  # strict types, as OpenAI has them: a number is no content
        sdk.chat.completions.create(model="auto", messages=[{"role": "user", "content": 5}])


def test_openai_sdk_n_choices_streamed_and_not(sdk: openai.OpenAI):
    out = sdk.chat.completions.create(model="auto", messages=CAPITAL, temperature=0.9, seed=7, max_tokens=12, n=3)
    assert [c.index for c in out.choices] == [0, 1, 2]
    assert all(c.message.content for c in out.choices)
    route = out.model_extra["route"]
    # Several samples: the Validator draws them in one engine request (vLLM's n); the Scout is not asked.
    assert route["tier"] == "validator" and route["stages"][0]["detail"]["reason"] == "multiple_choices"
    assert route["cost"]["validator"]["completion_tokens"] == out.usage.completion_tokens
    assert out.usage.completion_tokens >= 3  # all choices' tokens
    chunks = list(sdk.chat.completions.create(model="scout", messages=CAPITAL, temperature=0.9, max_tokens=8, n=2,
                                              stream=True, stream_options={"include_usage": True}))
    texts: dict[int, str] = {}
    for c in chunks:
        for choice in c.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
    assert set(texts) == {0, 1} and all(texts.values())
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    done = sdk.completions.create(model="validator", prompt="def add(a, b):\n    return", temperature=0, max_tokens=6,
                                  n=2)
    assert [c.index for c in done.choices] == [0, 1] and done.choices[0].text == done.choices[1].text  # greedy


GSM = [{"role": "user", "content": "Tom has 3 apples and buys 4 more. How many apples does he have? "
        "End with '#### <number>'."}]


@pytest.mark.parametrize(("name", "n"), [("majority_vote", 4), ("best_of_n", 3), ("search", 2)])
def test_strategies_run_on_the_real_engines(sdk: openai.OpenAI, name: str, n: int):
    """Sampling through vLLM's n, the Validator's one-pass scores (prompt_logprobs over several prompts), and a
    search's steps continuing an assistant message (continue_final_message) on the real engines."""
    out = sdk.chat.completions.create(model="auto", messages=GSM, temperature=0, max_tokens=24,
                                      extra_body={"strategy": {"name": name, "n": n}})
    route = out.model_extra["route"]
    assert (route["tier"], route["reason"]) == ("scout", "strategy"), route
    stage = route["stages"][0]
    assert stage["stage"] == "strategy" and stage["decision"] == "ran" and stage["detail"]["strategy"] == name
    candidates = stage["detail"]["candidates"]
    assert len(candidates) >= 1 if name == "search" else len(candidates) == n
    if name != "majority_vote":  # scored by the Validator: a real mean log-probability
        assert all(c["score"] is not None and c["score"] < 0 for c in candidates)
        assert route["cost"]["validator"]["prompt_tokens"] > 0
    assert out.choices[0].message.content
    assert out.usage.completion_tokens >= sum(c["tokens"] for c in candidates) > 0


def test_a_malformed_strategy_is_a_400(client: httpx.Client):
    r = chat(client, messages=GSM, strategy={"name": "beam", "n": 2})
    assert r.status_code == 400 and r.json()["error"]["param"] == "strategy.name"


# -- routing -----------------------------------------------------------------------------


def assert_consistent(route: dict) -> None:
    """The decision follows the recorded confidence and threshold."""
    scout = route["stages"][0]
    assert scout["stage"] == "scout"
    if route["confidence"] >= route["threshold"]:
        assert route["tier"] == "scout" and scout["decision"] == "confident" and len(route["stages"]) == 1
    else:
        assert route["tier"] == "validator" and scout["decision"] == "escalate"
        assert [s["stage"] for s in route["stages"]] == ["scout", "validator"]


def test_confident_scout_answers_itself(client: httpx.Client):
    # SmolLM2 is sure of this code continuation (confidence ~0.42 > 0.3 in fp32).
    r = client.post("/v1/completions", json={"prompt": "def fib(n):", "temperature": 0, "max_tokens": 30})
    assert r.status_code == 200, r.text
    route = r.json()["route"]
    assert r.headers["x-infopt-route"] == "scout" == route["tier"]
    assert route["reason"] == "confident" and route["confidence"] >= route["threshold"]
    assert_consistent(route)


def test_unsure_scout_escalates(client: httpx.Client):
    # SmolLM2 hesitates on this one (confidence ~0.16 < 0.3): the Validator answers.
    r = chat(client)
    assert r.status_code == 200, r.text
    route = r.json()["route"]
    assert r.headers["x-infopt-route"] == "validator" == route["tier"]
    assert route["reason"] == "escalated"
    assert_consistent(route)
    assert r.json()["model"] == "qwen2.5-coder-0.5b-instruct"


def test_per_request_threshold_moves_the_decision(client: httpx.Client):
    low = chat(client, confidence_threshold=0.0).json()["route"]
    high = chat(client, confidence_threshold=1.0).json()["route"]
    assert low["tier"] == "scout" and high["tier"] == "validator"
    assert low["confidence"] == high["confidence"]  # same Scout answer, different bar
    assert_consistent(low)
    assert_consistent(high)


@pytest.mark.parametrize(("model", "tier", "stages"), [("scout", "scout", ["scout"]),
                                                      ("validator", "validator", ["validator"])])
def test_forcing_a_tier(client: httpx.Client, model: str, tier: str, stages: list[str]):
    r = chat(client, model=model)
    route = r.json()["route"]
    assert r.headers["x-infopt-route"] == tier == route["tier"]
    assert route["reason"] == "forced"
    assert [s["stage"] for s in route["stages"]] == stages


@pytest.mark.parametrize("model", ["auto", "scout", "validator"])
def test_stream_assembles_to_the_non_streamed_answer(client: httpx.Client, model: str):
    body = {"model": model, "messages": CAPITAL, "temperature": 0, "max_tokens": 24}
    whole = chat(client, **body).json()
    text, events, headers = stream_text(client, "/v1/chat/completions", body)
    assert text == whole["choices"][0]["message"]["content"]
    assert headers["x-infopt-route"] == whole["route"]["tier"]
    final = [e for e in events if e["choices"] and e["choices"][0].get("finish_reason")]
    assert len(final) == 1 and final[0]["route"]["tier"] == whole["route"]["tier"]


def test_completion_stream_assembles_to_the_non_streamed_answer(client: httpx.Client):
    body = {"model": "validator", "prompt": "The three primary colors are", "temperature": 0, "max_tokens": 16}
    whole = client.post("/v1/completions", json=body).json()
    text, _, _ = stream_text(client, "/v1/completions", body)
    assert text == whole["choices"][0]["text"]


def test_stream_include_usage(client: httpx.Client):
    _, events, _ = stream_text(client, "/v1/chat/completions", {
        "model": "validator", "messages": CAPITAL, "temperature": 0, "max_tokens": 8,
        "stream_options": {"include_usage": True}})
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] > 0


def test_models_and_health(client: httpx.Client):
    assert client.get("/healthz").json()["status"] == "ok"
    models = client.get("/v1/models").json()
    assert models["object"] == "list"
    # The routing names, then the engines' own names (the tiny profile's pair), each once.
    assert [m["id"] for m in models["data"]] == [
        "auto", "scout", "validator", "smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"]


# -- bad input ---------------------------------------------------------------------------


def post_raw(client: httpx.Client, content: bytes, path: str = "/v1/chat/completions") -> httpx.Response:
    return client.post(path, content=content, headers={"content-type": "application/json"})


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        (b"{not json", 400, None),
        (b"", 400, None),
        (json.dumps({"model": "auto"}).encode(), 400, "messages"),
        (json.dumps({"messages": "hello"}).encode(), 400, "messages"),
        (json.dumps({"messages": []}).encode(), 400, "messages"),
        (json.dumps({"messages": CAPITAL, "temperature": "warm"}).encode(), 400, "temperature"),
        (json.dumps({"messages": CAPITAL, "model": "gpt-17"}).encode(), 404, "model"),
        (json.dumps({"messages": CAPITAL, "max_tokens": 5000}).encode(), 400, "max_tokens"),
        (json.dumps({"messages": CAPITAL, "n": 17}).encode(), 400, "n"),  # above api.max_choices
        (json.dumps({"messages": CAPITAL, "tools": [{"type": "function"}]}).encode(), 400, "tools"),
        (json.dumps({"messages": CAPITAL, "bogus_option": True}).encode(), 400, "bogus_option"),
    ],
)
def test_bad_input_gets_an_openai_error(client: httpx.Client, body: bytes, status: int, param: str | None):
    r = post_raw(client, body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["message"] and err["type"] == "invalid_request_error"  # 404 (unknown model) included
    assert err["param"] == param


def test_prompt_longer_than_the_context_window(client: httpx.Client):
    long = " ".join(["word"] * 3000)  # > 2048 tokens for both models
    for model in ("auto", "validator"):
        r = chat(client, model=model, messages=[{"role": "user", "content": long}])
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "context_length_exceeded"


def test_completion_bad_input(client: httpx.Client):
    r = client.post("/v1/completions", json={"prompt": ["a", "b"]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"


def test_prometheus_metrics_are_exported(svc: Service, client: httpx.Client):
    """Requests per route, stage latency, confidence and the arrival forecast reach Ray's Prometheus endpoint."""
    chat(client, model="scout", max_tokens=4)
    # Errors are counted too: this module has sent plenty of 4xx by now.
    missing = unexported(svc, "ray_infopt_requests", "ray_infopt_stage_latency_ms_bucket",
                         "ray_infopt_scout_confidence_bucket", "ray_infopt_tokens", 'route="error"', 'status="400"',
                         'route="scout"', 'stage="scout"',
                         # The Ingress's per-class forecast (smoothed now, 10 s and the horizon ahead).
                         "ray_infopt_arrival_rate_forecast", 'priority="interactive"', 'horizon_s="0"',
                         'horizon_s="10"')
    assert not missing, f"not exported: {missing}"


# -- failures: a clear 5xx with the trace, and the next request works -------------------


def test_validator_timeout_is_504_with_trace_then_service_recovers(client: httpx.Client):
    started = time.monotonic()
    r = chat(client, model="validator", max_tokens=500,
             messages=[{"role": "user", "content": "Count from 1 to 1000, one number per line."}])
    assert r.status_code == 504, r.text[:300]
    assert time.monotonic() - started < VALIDATOR_TIMEOUT_S + 15
    body = r.json()
    assert body["error"]["type"] == "timeout"
    assert body["route"]["stages"][-1] == {**body["route"]["stages"][-1], "stage": "validator", "decision": "failed"}
    ok = chat(client, model="validator", max_tokens=8)
    assert ok.status_code == 200


def test_dead_scout_replica_gives_503_or_falls_back_then_recovers(svc: Service, client: httpx.Client):
    """Kill the Scout's replica: forced-scout requests fail clearly, 'auto' ones fall back."""
    import ray
    from ray import serve

    status = serve.status().applications["infopt"].deployments["Scout"]
    assert status.status == "HEALTHY"
    replicas = [a for a in ray.util.list_named_actors(all_namespaces=True)
                if "Scout" in a["name"] and "SERVE_REPLICA" in a["name"]]
    assert replicas, "no Scout replica actor found"
    for a in replicas:
        ray.kill(ray.get_actor(a["name"], namespace=a["namespace"]), no_restart=False)
    forced = chat(client, model="scout", max_tokens=8)
    auto = chat(client, model="auto", max_tokens=8)
    # Depending on whether Serve has noticed the death yet, the call fails fast (503) or waits
    # for the restarted replica (200). Never a 500, never a hang.
    assert forced.status_code in (503, 504, 200), forced.text[:300]
    if forced.status_code != 200:
        assert forced.json()["route"]["stages"][0]["decision"] == "failed"
    else:  # answered by the restarted Scout, as forced: nothing else was asked
        assert (forced.json()["route"]["tier"], forced.json()["route"]["reason"]) == ("scout", "forced")
    assert auto.status_code == 200, auto.text[:300]
    if auto.json()["route"]["stages"][0]["decision"] == "failed":
        assert auto.json()["route"]["reason"] == "scout_failed"
    # Serve restarts the replica; then everything works again.
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if client.get("/healthz").status_code == 200 and chat(client, model="scout", max_tokens=4).status_code == 200:
            break
        time.sleep(3)
    else:
        pytest.fail("the Scout did not come back")


# -- verified escalation (the tiny profile turns it on) ----------------------------------

VERIFY_PROMPTS = [
    "What is the capital of France?", "Write a Python function that reverses a string.",
    "Explain recursion in one sentence.", "What is 17 times 23?", "Name three primary colors.",
    "How do I read a file line by line in Python?", "What does HTTP status 404 mean?",
    "Give me a haiku about autumn.", "What is a hash map?", "Translate 'good morning' into Spanish.",
    "Write a SQL query that counts rows in a table named users.", "Who wrote Romeo and Juliet?",
    "What is the boiling point of water in Fahrenheit?", "List two sorting algorithms.",
    "What is the difference between a list and a tuple in Python?", "Say hello in JSON.",
    "How many days are in a leap year?", "Write a bash command that lists hidden files.",
    "What is the square root of 144?", "Explain what an API is to a child.",
    "Write a regular expression that matches an email address.", "What is the largest planet?",
    "Describe the color blue without using the word blue.", "What is a closure in JavaScript?",
    "Convert 100 Celsius to Kelvin.", "Suggest a name for a pet turtle.",
]
VERIFY_COMPLETIONS = ["def fibonacci(n):", "The three laws of motion are", "import numpy as np\n\n# create",
                      "SELECT name FROM"]


def test_verified_escalation_equals_the_validator_alone_token_for_token(client: httpx.Client):
    """Greedy: the Validator verifying the Scout's draft answers exactly what it answers alone."""
    accepted = proposed = 0
    for prompt in VERIFY_PROMPTS:
        body = {"messages": [{"role": "user", "content": prompt}], "temperature": 0, "max_tokens": 16}
        alone = chat(client, model="validator", **body).json()
        # Threshold 1.0: the Scout always escalates, so the Validator verifies its draft.
        verified = chat(client, model="auto", confidence_threshold=1.0, **body).json()
        assert "route" in verified, verified
        stage = verified["route"]["stages"][-1]
        assert stage["stage"] == "validator" and stage["decision"] == "verified", verified["route"]
        assert verified["choices"][0]["message"]["content"] == alone["choices"][0]["message"]["content"], prompt
        assert verified["usage"]["completion_tokens"] == alone["usage"]["completion_tokens"], prompt
        assert verified["choices"][0]["finish_reason"] == alone["choices"][0]["finish_reason"], prompt
        accepted += stage["detail"]["accepted_tokens"]
        proposed += stage["detail"]["draft_tokens"]
    for prompt in VERIFY_COMPLETIONS:
        body = {"prompt": prompt, "temperature": 0, "max_tokens": 16}
        alone = client.post("/v1/completions", json={**body, "model": "validator"}).json()
        verified = client.post("/v1/completions", json={**body, "confidence_threshold": 1.0}).json()
        assert verified["route"]["stages"][-1]["decision"] == "verified"
        assert verified["choices"][0]["text"] == alone["choices"][0]["text"], prompt
    assert len(VERIFY_PROMPTS) + len(VERIFY_COMPLETIONS) >= 30
    assert proposed > 0 and 0 <= accepted <= proposed


def test_streamed_verified_escalation_equals_the_validator_alone(client: httpx.Client):
    """Streams verify too: the accepted prefix comes first, and the whole equals the Validator's answer."""
    for prompt in VERIFY_PROMPTS[:6]:
        body = {"messages": [{"role": "user", "content": prompt}], "temperature": 0, "max_tokens": 16}
        alone = chat(client, model="validator", **body).json()["choices"][0]["message"]["content"]
        text, events, headers = stream_text(client, "/v1/chat/completions",
                                            {**body, "model": "auto", "confidence_threshold": 1.0})
        assert headers["x-infopt-route"] == "validator"
        route = next(e["route"] for e in reversed(events) if "route" in e)
        last = route["stages"][-1]
        assert last["decision"] == "verified" and last["detail"]["draft_source"] == "scout"
        assert text == alone, prompt


def test_draft_and_engine_cache_metrics_are_exported(svc: Service, client: httpx.Client):
    """After the verified escalations above: draft counters by source, and vLLM's prefix-cache counters
    (ray.serve.llm exports the engines' own metrics; hit rate = hits / queries)."""
    # Two Validator requests sharing a long system prompt (several KV blocks): the second reuses
    # the first one's cached prefix, so vLLM counts prefix-cache hits (short prompts fill no block).
    system = " ".join(f"Rule {i}: answer briefly, politely and precisely." for i in range(60))
    for question in ("What is 2 + 2?", "Name a color."):
        r = chat(client, model="validator", max_tokens=1,
                 messages=[{"role": "system", "content": system}, {"role": "user", "content": question}])
        assert r.status_code == 200, r.text
    missing = unexported(svc, "ray_infopt_drafts_verified", "ray_infopt_draft_tokens", 'source="scout"',
                         'kind="accepted"', 'kind="saved"', "prefix_cache_queries", "prefix_cache_hits")
    assert not missing, f"not exported: {missing}"
