"""The running tiny service as a user or an attacker meets it: keys, tenants, rate limits, overload, and a
fuzz of its OpenAPI schema. Each test writes its figures to reports/reliability/<name>.json
(docs/reliability.md quotes one run)."""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from serving.config import KeySource, key_digest
from tests.serve.conftest import Service, running

pytestmark = pytest.mark.serve

REPORTS = Path(__file__).resolve().parents[2] / "reports" / "reliability"
KEYS = {"acme": "sk-acme-test", "globex": "sk-globex-test", "slow": "sk-slow-test"}
ADMIN = "sk-admin-test"


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def report(name: str, figures: dict) -> None:
    REPORTS.mkdir(parents=True, exist_ok=True)
    (REPORTS / f"{name}.json").write_text(json.dumps(figures, indent=2) + "\n")


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    from serving.config import load_profile

    config = load_profile("tiny")
    config.cache.path = tmp_path_factory.mktemp("semantic-cache")
    config.cache.admit_truncated = True
    config.api.max_tokens_limit = 8  # fuzzed requests generate little
    config.api.default_max_tokens = 4
    # A small queue of our own: overload shows within a few dozen requests.
    config.api.max_in_flight = 2
    config.api.max_waiting = 2
    config.api.max_wait_s = 30
    tenants = {name: {"keys": [KeySource(sha256=key_digest(key))]} for name, key in KEYS.items()}
    tenants["slow"]["requests_per_s"] = 0.2  # one request per 5 s
    config.auth = type(config.auth).model_validate(
        {"tenants": tenants, "admin_keys": [KeySource(sha256=key_digest(ADMIN))]})
    with running(config) as service:
        yield service


@pytest.fixture(scope="module")
def client(svc: Service):
    with svc.client(timeout=120) as c:
        yield c


def chat(client: httpx.Client, key: str | None, question: str, cache: dict | None = None, **body) -> httpx.Response:
    payload = {"model": "validator", "messages": [{"role": "user", "content": question}], "temperature": 0,
               "max_tokens": 4, **body}
    if cache is not None:
        payload["cache"] = cache
    return client.post("/v1/chat/completions", json=payload, headers=bearer(key) if key else {})


def is_openai_error(r: httpx.Response) -> bool:
    body = r.json()
    return set(body.get("error", {})) >= {"message", "type", "param", "code"}


def test_keys_are_enforced(client: httpx.Client):
    checks = {
        "no key": chat(client, None, "hi"),
        "wrong key": chat(client, "sk-wrong", "hi"),
        "models without key": client.get("/v1/models"),
        "stats without key": client.get("/v1/cache/stats"),
        "stats with a tenant key": client.get("/v1/cache/stats", headers=bearer(KEYS["acme"])),
        "ledger with a tenant key": client.get("/v1/ledger", headers=bearer(KEYS["acme"])),
        "invalidate with a tenant key": client.delete("/v1/cache", params={"all": "true"},
                                                      headers=bearer(KEYS["acme"])),
    }
    expected = {"no key": 401, "wrong key": 401, "models without key": 401, "stats without key": 401,
                "stats with a tenant key": 403, "ledger with a tenant key": 403, "invalidate with a tenant key": 403}
    got = {name: r.status_code for name, r in checks.items()}
    assert got == expected
    assert all(is_openai_error(r) for r in checks.values())
    assert chat(client, KEYS["acme"], "hi").status_code == 200
    assert client.get("/v1/cache/stats", headers=bearer(ADMIN)).status_code == 200
    assert client.get("/healthz").json()["auth"] == "keys"  # probes need no key
    report("keys", {"checks": got})


def test_a_chat_with_no_text_is_answered(client: httpx.Client):
    """A user turn with `"content": null` or an empty list has no text: Ray's prefix-aware router divided by
    its length and retried forever (the request hung; found by the fuzz below)."""
    for content in (None, [], ""):
        r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": content}]},
                        headers=bearer(KEYS["acme"]), timeout=60)
        assert r.status_code == 200, r.text


def test_tenants_cannot_read_fill_or_evict_each_others_entries(client: httpx.Client):
    tag = uuid.uuid4().hex[:6]
    questions = [f"Name a colour of the rainbow ({tag} {i})." for i in range(3)]
    for q in questions:  # acme fills its namespace (and a sub-namespace)
        assert chat(client, KEYS["acme"], q).status_code == 200
        assert chat(client, KEYS["acme"], q, cache={"namespace": "docs"}).status_code == 200
    assert all(chat(client, KEYS["acme"], q).json()["route"]["tier"] == "cache" for q in questions)

    attacks = Counter()
    cross_hits = 0
    for q in questions:
        for cache in (None, {"namespace": "acme"}, {"namespace": "docs"}, {"namespace": "acme:docs"},
                      {"namespace": "default"}):
            r = chat(client, KEYS["globex"], q, cache=cache)
            attacks["read"] += 1
            assert r.status_code == 200, r.text
            # Every one of these is globex's first ask in that namespace: any cache answer came from elsewhere.
            cross_hits += r.json()["route"]["tier"] == "cache"
            assert _cache_namespace(r.json()).startswith("globex"), r.json()["route"]
    # Evictions: a tenant may not invalidate (403), so acme's entries stay.
    for params in ({"namespace": "acme"}, {"all": "true"}, {"tag": tag}):
        attacks["evict"] += 1
        assert client.delete("/v1/cache", params=params, headers=bearer(KEYS["globex"])).status_code == 403
    # Filling: globex's answers never land where acme reads (acme still hits its own, first-written entries).
    after = [chat(client, KEYS["acme"], q).json()["route"] for q in questions]
    attacks["fill"] += len(questions) * 5
    assert all(route["tier"] == "cache" for route in after)
    stats = client.get("/v1/cache/stats", headers=bearer(ADMIN)).json()["namespaces"]
    assert {ns for ns in stats if ns.startswith("acme")} == {"acme", "acme:docs"}
    assert cross_hits == 0
    report("tenants", {"attacks": dict(attacks), "cross_tenant_results": cross_hits,
                       "namespaces": sorted(ns for ns in stats if ns.split(":")[0] in KEYS)})


def _cache_namespace(body: dict) -> str:
    """The namespace the cache stage of a response looked in."""
    for stage in body["route"]["stages"]:
        if stage["stage"] == "cache":
            return str(stage.get("detail", {}).get("namespace", ""))
    return ""


def test_a_tenants_rate_limit_is_a_429_with_retry_after(client: httpx.Client):
    statuses = [chat(client, KEYS["slow"], f"rate {i}") for i in range(3)]
    assert statuses[0].status_code == 200
    limited = [r for r in statuses[1:] if r.status_code == 429]
    assert limited, [r.status_code for r in statuses]
    for r in limited:
        assert r.json()["error"]["code"] == "rate_limit_exceeded" and int(r.headers["retry-after"]) >= 1
    assert chat(client, KEYS["globex"], "not limited").status_code == 200  # another tenant is not affected
    report("rate_limit", {"sent": 3, "limited": len(limited)})


def test_the_openai_sdk_raises_its_own_errors_for_keys_limits_and_the_admin_page(svc: Service):
    """The official SDK against a service with keys: 401, 403 and 429 surface as the SDK's own exception classes
    with their status codes (and the SDK's built-in retries are off, so the 429 is seen as such)."""
    import openai

    def sdk(key: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=svc.base_url + "/v1", api_key=key, max_retries=0, timeout=120)

    ask = {"model": "validator", "messages": [{"role": "user", "content": "sdk"}], "max_tokens": 2, "temperature": 0}
    with pytest.raises(openai.AuthenticationError) as wrong:
        sdk("sk-wrong").chat.completions.create(**ask)
    assert wrong.value.status_code == 401
    assert sdk(KEYS["globex"]).chat.completions.create(**ask).choices[0].message.content is not None
    with pytest.raises(openai.PermissionDeniedError) as tenant:  # a tenant's key on an admin endpoint
        sdk(KEYS["acme"]).get("/dashboard/state", cast_to=object)
    assert tenant.value.status_code == 403
    slow = sdk(KEYS["slow"])
    with pytest.raises(openai.RateLimitError) as limited:
        for i in range(3):
            slow.chat.completions.create(**{**ask, "messages": [{"role": "user", "content": f"sdk {i}"}]})
    assert limited.value.status_code == 429 and int(limited.value.response.headers["retry-after"]) >= 1


def test_overload_rejects_cleanly_and_admitted_requests_succeed(svc: Service):
    """About twice what the queue holds (2 in flight + 2 waiting), at once: each answer is a 200 or a clean
    429/503 with Retry-After, never another error."""
    n = 12

    def one(i: int) -> tuple[int, float, httpx.Response]:
        with svc.client(timeout=120) as c:
            t0 = time.perf_counter()
            r = chat(c, KEYS["globex"], f"Count to ten, attempt {i} {uuid.uuid4().hex[:4]}.", max_tokens=8,
                     cache={"mode": "bypass"})
            return r.status_code, time.perf_counter() - t0, r

    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(one, range(n)))
    codes = Counter(code for code, _, _ in results)
    assert set(codes) <= {200, 429, 503}, codes
    assert codes[200] >= 4 and codes[429] + codes[503] >= 1, codes
    for code, _, r in results:
        if code != 200:
            assert is_openai_error(r) and int(r.headers["retry-after"]) >= 1
    admitted = sorted(s for code, s, _ in results if code == 200)
    report("overload", {"sent": n, "admitted": codes[200], "rejected_429": codes[429], "rejected_503": codes[503],
                        "errors": n - codes[200] - codes[429] - codes[503],
                        "admitted_p50_s": round(admitted[len(admitted) // 2], 2),
                        "admitted_max_s": round(admitted[-1], 2)})


# -- a fuzz of the OpenAPI schema ---------------------------------------------------------------------

FUZZ_EXAMPLES = 40  # per operation


def _fuzz(svc: Service, operation, headers: dict[str, str], figures: Counter) -> None:
    """FUZZ_EXAMPLES requests drawn for one operation; each must get an answer below 500 within the timeout."""
    from hypothesis import HealthCheck, given, settings

    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy())
    def fuzz(case) -> None:
        t0 = time.perf_counter()
        response = case.call(base_url=svc.base_url, headers=headers, timeout=60)
        figures["slowest_ms"] = max(figures["slowest_ms"], round((time.perf_counter() - t0) * 1000))
        figures["cases"] += 1
        figures[f"{case.method.upper()} {case.path}"] += 1
        figures[f"status {response.status_code // 100}xx"] += 1
        assert response.status_code < 500, (case.method, case.path, case.body, response.text[:300])

    fuzz()


def test_fuzzed_requests_never_get_a_5xx_or_hang(svc: Service):
    """schemathesis draws requests from the service's own /openapi.json (bodies, query strings, headers), valid
    and not, for every operation; none may get a 5xx or take longer than the timeout."""
    import schemathesis

    schema = schemathesis.openapi.from_url(f"{svc.base_url}/openapi.json")
    figures: Counter = Counter()
    for result in schema.get_all_operations():
        operation = result.ok()
        # The tenant key for the API, the admin key for administration: the fuzz reaches past the 401s.
        admin = operation.path.startswith(("/v1/cache", "/v1/ledger", "/v1/quality"))
        _fuzz(svc, operation, bearer(ADMIN if admin else KEYS["acme"]), figures)
    report("fuzz", dict(sorted(figures.items())))
    assert figures["cases"] >= FUZZ_EXAMPLES  # it did fuzz
