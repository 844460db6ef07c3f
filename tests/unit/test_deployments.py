"""The deployments as the composition root builds them, and the Embedder's batching (no Ray started)."""

from __future__ import annotations

import pytest

from serving.config import AppConfig

BASE = {"scout": {"model": "a"}, "validator": {"model": "b"}}


def _build(monkeypatch, **overrides):
    """`build_app` with the engines' LLMServer deployments stubbed (they need prepared models and vLLM)."""
    pytest.importorskip("ray.serve")
    import deployments.app as app_module

    monkeypatch.setattr(app_module, "build_engine", lambda engine, role, config: f"{role}-app")
    monkeypatch.setattr(AppConfig, "resolve_model", lambda self, model: f"/models/{model}")
    return app_module.build_app({**BASE, **overrides})


def test_build_app_injects_the_parts_and_the_analyzer_runs_in_the_ingress(monkeypatch):
    from serving.compose import Parts
    from serving.handles import ServeEmbedder, ServeLLMEngine, ServeResponseCache

    app = _build(monkeypatch, analyzer={"enabled": True}, cache={"enabled": True})
    assert app._bound_deployment.name == "Ingress"
    (parts,) = app._bound_deployment.init_args
    assert isinstance(parts, Parts)
    assert isinstance(parts.scout, ServeLLMEngine) and parts.scout._handle == "Scout-app"
    assert isinstance(parts.validator, ServeLLMEngine) and parts.validator._handle == "Validator-app"
    assert isinstance(parts.cache, ServeResponseCache)
    assert parts.cache._handle._bound_deployment.name == "SemanticCache"
    # No RequestAnalyzer deployment: the analyzer embeds through the Embedder's handle itself.
    assert isinstance(parts.embedder, ServeEmbedder) and parts.embedder._handle._bound_deployment.name == "Embedder"
    assert parts.embedder._handle is parts.cache._handle._bound_deployment.init_args[0]  # one Embedder for both


def test_build_app_without_cache_or_analyzer_has_no_embedder(monkeypatch):
    (parts,) = _build(monkeypatch)._bound_deployment.init_args
    assert parts.cache is None and parts.embedder is None
    assert parts.validator.can_verify is False  # verified_escalation off: no tokenizer to load


def test_injected_engines_pickle_without_their_loaded_state():
    """`.bind()` pickles the parts into the Ingress's arguments: an engine whose tokenizer was loaded
    travels as its recipe."""
    import pickle

    from serving.handles import ServeLLMEngine

    engine = ServeLLMEngine("handle", "qwen", tokenizer="some/folder")
    engine._tokenizer = object()  # stands for a loaded tokenizer (not picklable by design)
    copy = pickle.loads(pickle.dumps(engine))
    assert copy._tokenizer is None and copy._tokenizer_source == "some/folder" and copy.can_verify


def test_the_embedder_batches_and_its_batch_follows_the_arrival_rate(monkeypatch):
    """The Embedder deployment's own `@serve.batch` (Ray's, run without a cluster): concurrent texts share
    one model call, and the batch wait Ray applies follows the arrival rate its entry point (`embed`)
    measures before a text joins a batch."""
    pytest.importorskip("ray.serve")
    import asyncio
    from types import SimpleNamespace

    from ray import serve

    # Ray's batch queue reads the replica's max_ongoing_requests (to warn); there is no replica here.
    monkeypatch.setattr(serve, "get_replica_context",
                        lambda: SimpleNamespace(_deployment_config=SimpleNamespace(max_ongoing_requests=64)))

    from deployments.cache import Embedder
    from serving.config import AdaptiveBatchingConfig
    from serving.load.batching import AdaptiveBatching
    from serving.metrics import Metrics
    from tests.unit.fakes import FakeEmbedder

    class Recording(Metrics):
        def __init__(self) -> None:
            self.params: list[tuple[int, float]] = []

        def batch_params(self, deployment: str, max_batch_size: int, batch_wait_timeout_s: float) -> None:
            self.params.append((max_batch_size, batch_wait_timeout_s))

    class Ticking:
        """A clock that moves `step` seconds at every reading: one reading per arrival."""

        def __init__(self) -> None:
            self.now, self.step = 0.0, 0.5

        def __call__(self) -> float:
            self.now += self.step
            return self.now

    clock, embedder, metrics = Ticking(), FakeEmbedder(), Recording()
    dep = object.__new__(Embedder.func_or_class)  # its __init__ loads a real model
    dep.embedder = embedder
    dep.batching = AdaptiveBatching(
        dep._embed_batch, 16, 0.05, AdaptiveBatchingConfig(halflife_s=0.5, update_interval_s=0.1), clock=clock,
        on_change=lambda p: metrics.batch_params("Embedder", p.max_batch_size, p.batch_wait_timeout_s))
    batch = dep._embed_batch

    async def go() -> tuple[float, float, int, list[list[float]]]:
        for _ in range(8):  # 2 requests/s: nobody else is coming, so no wait
            await dep.embed("What is 2 + 2?")
        low = batch._get_batch_wait_timeout_s()
        clock.step = 0.001  # 1000 requests/s
        for _ in range(300):
            dep.batching.on_request()
        high = batch._get_batch_wait_timeout_s()
        before = embedder.calls
        texts = [f"question {i}" for i in range(16)]
        vectors = await asyncio.gather(*(dep.embed(t) for t in texts))
        assert vectors == [FakeEmbedder.vector(t) for t in texts]  # each caller gets its own text's vector
        return low, high, embedder.calls - before, vectors

    # Ray keeps the batch queue on the decorated function (one per class): put it back as it was,
    # or the class can no longer be pickled into a deployment by later tests.
    lazy = batch._get_max_batch_size.__self__
    saved = (lazy.max_batch_size, lazy.batch_wait_timeout_s)
    try:
        low, high, calls, _ = asyncio.run(go())
        applied = (batch._get_max_batch_size(), batch._get_batch_wait_timeout_s())
    finally:
        lazy._queue = None
        lazy.max_batch_size, lazy.batch_wait_timeout_s = saved
    assert low == 0.0
    assert 0 < high <= 0.05 and applied[0] == 16
    # What Ray applied is what the controller chose last, and what was exported.
    assert applied == metrics.params[-1]
    assert dep.batching.controller.params.batch_wait_timeout_s == applied[1] > 0
    assert calls <= 2  # 16 concurrent texts, one or two model calls


def test_fastapis_own_404_and_405_come_in_openais_error_shape():
    pytest.importorskip("ray.serve")
    from fastapi.testclient import TestClient

    import deployments.ingress as ingress

    client = TestClient(ingress.app)
    r = client.get("/v1/no-such-endpoint")
    assert r.status_code == 404
    assert r.json() == {"error": {"message": "Not Found", "type": "invalid_request_error", "param": None,
                                  "code": "not_found"}}
    r = client.get("/v1/chat/completions")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


def _request(body: bytes, declared: int | None = None):
    from starlette.requests import Request

    chunks = [body[i:i + 1000] for i in range(0, len(body), 1000)] or [b""]

    async def receive():
        part = chunks.pop(0) if chunks else b""
        return {"type": "http.request", "body": part, "more_body": bool(chunks)}

    headers = [(b"content-length", str(len(body) if declared is None else declared).encode())]
    return Request({"type": "http", "method": "POST", "path": "/", "headers": headers}, receive)


def test_a_body_over_the_limit_is_refused_before_it_is_read():
    pytest.importorskip("ray.serve")
    import asyncio

    from deployments.ingress import _json_body
    from serving.errors import RequestTooLargeError, to_openai_error

    assert asyncio.run(_json_body(_request(b'{"a": 1}'), 4096)) == {"a": 1}
    with pytest.raises(RequestTooLargeError) as info:
        asyncio.run(_json_body(_request(b"x" * 5000), 4096))  # declared too large: not read at all
    assert to_openai_error(info.value)[0] == 413
    with pytest.raises(RequestTooLargeError):  # a body that lies about its length is cut off while read
        asyncio.run(_json_body(_request(b"x" * 5000, declared=10), 4096))


def test_the_openapi_schema_declares_request_bodies_and_error_responses():
    """Client generators and fuzzers see what each POST accepts and which errors come back."""
    pytest.importorskip("ray.serve")
    from fastapi.testclient import TestClient

    import deployments.ingress as ingress

    schema = TestClient(ingress.app).get("/openapi.json").json()
    components = schema["components"]["schemas"]
    for path, model in (("/v1/chat/completions", "ChatCompletionRequest"), ("/v1/completions", "CompletionRequest")):
        post = schema["paths"][path]["post"]
        assert post["requestBody"]["content"]["application/json"]["schema"] == {"$ref": f"#/components/schemas/{model}"}
        assert {"400", "401", "403", "404", "413", "429", "503", "504"} <= set(post["responses"])
        assert post["parameters"][0]["name"] == "x-infopt-priority"
        assert post["responses"]["400"]["content"]["application/json"]["schema"]["$ref"].endswith("ErrorResponse")
    assert "messages" in components["ChatCompletionRequest"]["required"]
    invalidation = {p["name"] for p in schema["paths"]["/v1/cache"]["delete"]["parameters"]}
    assert invalidation == {"namespace", "model", "tag", "older_than_s", "all"}
    refs = {v for v in _refs(schema)}
    assert refs and all(r.removeprefix("#/components/schemas/") in components for r in refs)  # every $ref resolves


def _refs(node):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref":
                yield v
            else:
                yield from _refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from _refs(v)


def test_a_non_finite_number_in_an_answer_is_sent_as_null_not_a_500():
    """A -inf log-probability (a token the model gave no chance) or a NaN score must not fail the response:
    JSON has no such numbers, and Starlette's own encoder refuses them."""
    import json
    import math

    from deployments.ingress import ServiceJSONResponse
    from serving.service import sse

    body = {"choices": [{"logprobs": {"token_logprobs": [-0.1, -math.inf]}}], "route": {"score": math.nan},
            "text": "naïve"}
    sent = json.loads(ServiceJSONResponse(body).body)
    assert sent["choices"][0]["logprobs"]["token_logprobs"] == [-0.1, None] and sent["route"]["score"] is None
    assert sent["text"] == "naïve"
    event = sse({"x": (math.inf, 1.5)})
    assert event.startswith("data: ") and json.loads(event[6:]) == {"x": [None, 1.5]}
