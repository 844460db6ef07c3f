"""Keys, tenants, their namespaces, classes and limits (serving/tenancy.py, serving/config/auth.py)."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import ValidationError

from serving.config import AppConfig, AuthConfig, KeySource, PriorityConfig, key_digest
from serving.errors import (
    AuthenticationError,
    PermissionDeniedError,
    QuotaExceededError,
    RateLimitError,
    to_openai_error,
)
from serving.tenancy import Caller, Tenancy

BASE = {"scout": {"model": "a"}, "validator": {"model": "b"}}


def _auth(**tenants) -> AuthConfig:
    return AuthConfig(tenants=tenants, admin_keys=[{"sha256": key_digest("sk-admin")}])


def test_open_service_lets_anyone_in_and_says_so():
    tenancy = Tenancy(AuthConfig())
    assert tenancy.is_open and "OPEN" in tenancy.describe()
    caller = tenancy.authenticate(None)
    assert caller == Caller(tenant=None) == tenancy.authenticate("sk-whatever-the-sdk-sends")
    tenancy.require_admin(caller)  # no admin key configured: admin endpoints are open too
    # An open service keeps today's behaviour: the client's namespace as sent.
    assert tenancy.namespace(caller, "docs") == "docs" and tenancy.namespace(caller, None) is None


def test_admin_keys_alone_guard_administration_only():
    tenancy = Tenancy(AuthConfig(admin_keys=[{"sha256": key_digest("sk-admin")}]))
    assert tenancy.is_open and "1 admin key(s)" in tenancy.describe()
    anonymous = tenancy.authenticate("sk-wrong")
    assert anonymous.tenant is None and not anonymous.admin
    with pytest.raises(AuthenticationError):
        tenancy.require_admin(anonymous)
    tenancy.require_admin(tenancy.authenticate("sk-admin"))


def test_keys_from_digest_env_and_file(tmp_path, monkeypatch):
    monkeypatch.setenv("ACME_KEY", "sk-acme-env")
    (tmp_path / "key").write_text("sk-acme-file\n")  # a mounted Secret ends with a newline
    tenancy = Tenancy(_auth(acme={"keys": [{"sha256": key_digest("sk-acme")}, {"env": "ACME_KEY"},
                                           {"file": str(tmp_path / "key")}]}))
    assert not tenancy.is_open and "1 tenant(s) with 3 key(s), 1 admin key(s)" in tenancy.describe()
    for key in ("sk-acme", "sk-acme-env", "sk-acme-file"):
        assert tenancy.authenticate(key).tenant == "acme"
    admin = tenancy.authenticate("sk-admin")
    assert admin.admin and admin.tenant is None
    # The log names a key by a few digits of its digest, never the key.
    assert "sk-acme" not in tenancy.authenticate("sk-acme").label
    assert "sk-acme" not in repr(tenancy.__dict__)


def test_missing_unknown_and_non_admin_keys_are_refused():
    tenancy = Tenancy(_auth(acme={"keys": [{"sha256": key_digest("sk-acme")}]}))
    for token in (None, "", "sk-wrong"):
        with pytest.raises(AuthenticationError) as e:
            tenancy.authenticate(token)
        assert to_openai_error(e.value)[0] == 401
    with pytest.raises(PermissionDeniedError) as e:
        tenancy.require_admin(tenancy.authenticate("sk-acme"))
    assert to_openai_error(e.value) == (403, {"error": {"message": "this endpoint needs an admin key "
                                                       "(auth.admin_keys)", "type": "permission_error",
                                                       "param": None, "code": "permission_denied"}})


def test_a_key_source_names_exactly_one_place_and_must_hold_a_key(monkeypatch, tmp_path):
    with pytest.raises(ValidationError, match="exactly one of sha256, env, file"):
        KeySource(sha256="ab" * 32, env="X")
    with pytest.raises(ValidationError, match="exactly one"):
        KeySource()
    with pytest.raises(ValidationError):
        KeySource(sha256="sk-plain-key")  # a plain key where a digest belongs
    monkeypatch.delenv("NOPE", raising=False)
    with pytest.raises(ValueError, match="environment variable NOPE is missing or empty"):
        Tenancy(_auth(acme={"keys": [{"env": "NOPE"}]}))
    with pytest.raises(ValueError, match="cannot be read"):
        Tenancy(_auth(acme={"keys": [{"file": str(tmp_path / "absent")}]}))


def test_one_key_cannot_belong_to_two_tenants_or_be_an_admin_key():
    with pytest.raises(ValueError, match="also tenant"):
        Tenancy(AuthConfig(tenants={"a": {"keys": [{"sha256": key_digest("k")}]},
                                    "b": {"keys": [{"sha256": key_digest("k")}]}}))
    with pytest.raises(ValueError, match="admin key"):
        Tenancy(AuthConfig(tenants={"a": {"keys": [{"sha256": key_digest("k")}]}},
                           admin_keys=[{"sha256": key_digest("k")}]))


def test_the_server_chooses_the_namespace_and_clients_only_get_sub_namespaces():
    tenancy = Tenancy(_auth(acme={"keys": [{"sha256": key_digest("sk-a")}]},
                            globex={"keys": [{"sha256": key_digest("sk-g")}], "namespace": "gx"}))
    acme, globex = tenancy.authenticate("sk-a"), tenancy.authenticate("sk-g")
    assert tenancy.namespace(acme, None) == "acme" and tenancy.namespace(globex, None) == "gx"
    assert tenancy.namespace(acme, "docs") == "acme:docs"
    # Whatever acme names, it stays under acme: naming the other tenant's namespace gets a sub-namespace of its own.
    for attempt in ("gx", "globex", "default", "gx:docs", "acme"):
        assert tenancy.namespace(acme, attempt).startswith("acme:")


def test_tenant_namespaces_are_distinct_and_hold_no_separator():
    with pytest.raises(ValidationError, match="share the namespace 'x'"):
        AuthConfig(tenants={"a": {"keys": [{"sha256": "ab" * 32}], "namespace": "x"},
                            "x": {"keys": [{"sha256": "cd" * 32}]}})
    with pytest.raises(ValidationError):
        AuthConfig(tenants={"a": {"keys": [{"sha256": "ab" * 32}], "namespace": "b:c"}})
    with pytest.raises(ValidationError, match="its name is not a namespace"):
        AuthConfig(tenants={"a:b": {"keys": [{"sha256": "ab" * 32}]}})


def test_a_tenants_class_is_its_default_and_its_ceiling():
    tenancy = Tenancy(_auth(bulk={"keys": [{"sha256": key_digest("sk-b")}], "priority": "batch"},
                            free={"keys": [{"sha256": key_digest("sk-f")}]}), PriorityConfig())
    bulk, free = tenancy.authenticate("sk-b"), tenancy.authenticate("sk-f")
    assert tenancy.priority(bulk, None).name == "batch"
    assert tenancy.priority(bulk, "interactive").name == "batch"  # cannot promote itself
    assert tenancy.priority(free, "batch").name == "batch" and tenancy.priority(free, None).name == "interactive"
    with pytest.raises(ValidationError, match="unknown priority classes"):
        AppConfig(**BASE, auth={"tenants": {"t": {"keys": [{"sha256": "ab" * 32}], "priority": "vip"}}})


def test_requests_per_second_gives_429_with_retry_after():
    tenancy = Tenancy(_auth(acme={"keys": [{"sha256": key_digest("sk-a")}], "requests_per_s": 2},
                            other={"keys": [{"sha256": key_digest("sk-o")}], "requests_per_s": 2}))
    acme, other = tenancy.authenticate("sk-a"), tenancy.authenticate("sk-o")

    async def run() -> None:
        await tenancy.admit(acme)
        await tenancy.admit(acme)
        with pytest.raises(RateLimitError) as e:
            await tenancy.admit(acme)
        status, body = to_openai_error(e.value)
        assert (status, body["error"]["code"]) == (429, "rate_limit_exceeded") and e.value.retry_after_s >= 1
        await tenancy.admit(other)  # one tenant's limit is its own

    asyncio.run(run())


def test_tokens_per_minute_and_budget_are_spent_by_answered_requests():
    tenancy = Tenancy(_auth(acme={"keys": [{"sha256": key_digest("sk-a")}], "tokens_per_min": 100},
                            paid={"keys": [{"sha256": key_digest("sk-p")}], "budget_engine_s": 2.0}))
    acme, paid = tenancy.authenticate("sk-a"), tenancy.authenticate("sk-p")

    async def run() -> None:
        await tenancy.admit(acme)
        await tenancy.spend("acme", 60, 0.5)
        await tenancy.admit(acme)  # 40 tokens left
        await tenancy.spend("acme", 60, 0.5)  # counted past the limit: the next request is the one refused
        with pytest.raises(RateLimitError, match="tokens"):
            await tenancy.admit(acme)
        assert (await tenancy.usage("acme"))["tokens"]["remaining"] == 0

        await tenancy.spend("paid", 10_000, 1.5)
        await tenancy.admit(paid)
        await tenancy.spend("paid", 10, 0.6)
        with pytest.raises(QuotaExceededError) as e:
            await tenancy.admit(paid)
        assert to_openai_error(e.value)[1]["error"]["code"] == "insufficient_quota"
        assert e.value.retry_after_s > 3600  # a day's window

    asyncio.run(run())



# -- through the service: namespaces, metering ---------------------------------------------------------

def _service(tmp_path, auth: AuthConfig):
    from serving.cache.edge import EdgeStore
    from serving.cache.semantic import SemanticCache
    from serving.config import ApiConfig, CacheConfig, TieringConfig
    from serving.pipeline import build_pipeline
    from serving.service import OpenAIService
    from serving.tenancy import TenantMeter
    from tests.unit.fakes import FakeEmbedder, FakeEngine

    scout = FakeEngine("small", ["Par", "is", ".", ""], [-0.01] * 4)
    validator = FakeEngine("large", ["Paris", " is", " the", " capital."])
    config = CacheConfig(enabled=True, similarity_threshold=0.8)
    cache = SemanticCache(EdgeStore(tmp_path / "store", FakeEmbedder.dimension), FakeEmbedder(), config)
    pipeline = build_pipeline(scout, validator, TieringConfig(threshold=0.5), cache=cache, cache_config=config)
    tenancy = Tenancy(auth)
    pipeline.observers.append(TenantMeter(tenancy))
    return OpenAIService(pipeline, ApiConfig(), scout, validator, tenancy), cache


def test_tenants_never_see_each_others_entries_and_pay_for_their_own(tmp_path):
    from serving.api import ChatCompletionRequest
    from serving.service import parse_request

    auth = _auth(acme={"keys": [{"sha256": key_digest("sk-a")}], "tokens_per_min": 10_000},
                 globex={"keys": [{"sha256": key_digest("sk-g")}]})
    svc, cache = _service(tmp_path, auth)
    body = {"messages": [{"role": "user", "content": "What is the capital of France?"}], "temperature": 0,
            "model": "validator"}

    async def ask(key: str, **extra):
        caller, priority = await svc.admit(key, None)
        req = parse_request(ChatCompletionRequest, {**body, **extra})
        return (await svc.chat(req, priority, caller))[1]

    async def run() -> None:
        first = await ask("sk-a")
        assert first.tier == "validator"
        assert (await ask("sk-a")).tier == "cache"  # acme's own entry
        # globex asks the same, naming acme's namespace outright: a miss in its own.
        for extra in ({}, {"cache": {"namespace": "acme"}}):
            trace = await ask("sk-g", **extra)
            assert trace.tier == "validator", extra
        # acme's sub-namespace is its own too.
        assert (await ask("sk-a", cache={"namespace": "docs"})).tier == "validator"
        await asyncio.sleep(0.05)  # the meter spends in a task of its own
        left = (await svc.tenancy.usage("acme"))["tokens"]["remaining"]
        assert left < 10_000  # the answered requests' tokens were counted against acme

    asyncio.run(run())
    # Every entry landed in a namespace of its writer's: acme's two, and globex's own two.
    assert set(asyncio.run(cache.stats())["namespaces"]) == {"acme", "acme:docs", "globex", "globex:acme"}
