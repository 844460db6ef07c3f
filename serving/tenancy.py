"""Tenants: who is calling, which cache namespace and priority class they get, and how much they may spend.

`Tenancy` is built once per Ingress replica from the `auth` section (`serving/config/auth.py`):

- `authenticate(token)` -> a `Caller`: the tenant a bearer key belongs to, an admin, or, when no key
  is configured at all, the anonymous caller of an open service. Keys are held only as sha256
  digests and compared in constant time; an unknown or missing key is a 401.
- `namespace(caller, requested)`: the cache namespace is the server's choice. A tenant's requests
  live in its own namespace; a `cache.namespace` it sends names a sub-namespace
  `<tenant namespace>:<name>` (tenant namespaces hold no ':' and are distinct, so no name a client
  can send reaches another tenant's entries).
- `priority(caller, header)`: a tenant's class is its default and the best it may name.
- `admit(caller)`: the tenant's limits, before any work: requests per second (counted here),
  tokens per minute and the budget (spent by its earlier requests) -> 429 with Retry-After.
- `TenantMeter`, an observer of the pipeline, spends each answered request's tokens and
  engine-seconds (the cost ledger's unit) against its tenant's limits.

Counting is the `limits` library's fixed windows over its storage (`auth.limits_storage`):
in memory, per Ingress replica, or in Redis, shared by all replicas.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from limits import (
    RateLimitItem,
    RateLimitItemPerDay,
    RateLimitItemPerHour,
    RateLimitItemPerMinute,
    RateLimitItemPerMonth,
    RateLimitItemPerSecond,
)
from limits.aio.strategies import FixedWindowRateLimiter
from limits.storage import storage_from_string

from serving.config import AuthConfig, PriorityConfig, TenantConfig, key_digest
from serving.errors import AuthenticationError, PermissionDeniedError, QuotaExceededError, RateLimitError
from serving.pipeline import Observer
from serving.priority import Priority, resolve_priority

if TYPE_CHECKING:
    from serving.pipeline import RequestState

logger = logging.getLogger("ray.serve")

_WINDOWS = {"hour": RateLimitItemPerHour, "day": RateLimitItemPerDay, "month": RateLimitItemPerMonth}


@dataclass(frozen=True)
class Caller:
    """Who sent a request: a tenant (by name), an admin, or anonymous (an open service)."""

    tenant: str | None
    admin: bool = False
    # A few hex digits of the key's digest: enough to tell keys apart in a log, useless to an attacker.
    key_hint: str = "open"

    @property
    def label(self) -> str:
        """How logs name this caller."""
        if self.admin:
            return f"admin key {self.key_hint}"
        return f"tenant '{self.tenant}' (key {self.key_hint})" if self.tenant else "anonymous (open service)"


@dataclass(frozen=True)
class _Limits:
    requests: RateLimitItem | None
    tokens: RateLimitItem | None
    budget_ms: RateLimitItem | None  # engine-milliseconds: the library counts integers


def _per_second(rate: float) -> RateLimitItem:
    """`rate` requests per second as a fixed window: whole seconds, at least one request a window."""
    if rate >= 1:
        return RateLimitItemPerSecond(round(rate))
    seconds = round(1 / rate)
    return RateLimitItemPerSecond(1, seconds)


def _limits(tenant: TenantConfig) -> _Limits:
    return _Limits(
        requests=_per_second(tenant.requests_per_s) if tenant.requests_per_s else None,
        tokens=RateLimitItemPerMinute(tenant.tokens_per_min) if tenant.tokens_per_min else None,
        budget_ms=_WINDOWS[tenant.budget_window](round(tenant.budget_engine_s * 1000))
        if tenant.budget_engine_s else None,
    )


class Tenancy:
    """Keys, tenants and their limits (see the module docstring)."""

    def __init__(self, config: AuthConfig, priority: PriorityConfig | None = None) -> None:
        self.config = config
        self.priority_config = priority or PriorityConfig()
        self._tenants: dict[str, str] = {}  # key digest -> tenant
        for name, tenant in config.tenants.items():
            for source in tenant.keys:
                self._add(source.digest(), name, source.describe())
        self._admins: set[str] = set()
        for source in config.admin_keys:
            digest = source.digest()
            if digest in self._tenants:
                raise ValueError(f"admin key ({source.describe()}) is also tenant '{self._tenants[digest]}''s key")
            self._admins.add(digest)
        self._limits = {name: _limits(t) for name, t in config.tenants.items()}
        uri = config.limits_storage
        self._limiter = FixedWindowRateLimiter(storage_from_string(uri if uri.startswith("async+") else f"async+{uri}"))
        self._tasks: set[asyncio.Task[None]] = set()

    def _add(self, digest: str, tenant: str, where: str) -> None:
        if digest in self._tenants and self._tenants[digest] != tenant:
            raise ValueError(f"the key ({where}) of tenant '{tenant}' is also tenant '{self._tenants[digest]}''s")
        self._tenants[digest] = tenant

    @property
    def is_open(self) -> bool:
        """No tenant key is configured: anyone may send requests, as the anonymous caller."""
        return not self.config.tenants

    def describe(self) -> str:
        """One line for the start-up log: open, or how many tenants and keys."""
        admin = (f"{len(self._admins)} admin key(s)" if self._admins else
                 "no admin key: the administration endpoints are open" if self.is_open else
                 "no admin key: the administration endpoints are closed")
        if self.is_open:
            return ("auth: OPEN. No tenant API key is configured (auth.tenants): anyone who reaches this port may "
                    f"send requests, all in the shared cache namespace; {admin}. Configure keys before exposing it.")
        return (f"auth: {len(self.config.tenants)} tenant(s) with {len(self._tenants)} key(s), {admin}; "
                f"limits counted in {self.config.limits_storage.split('://')[0]}")

    # -- who ------------------------------------------------------------------------------

    def authenticate(self, token: str | None) -> Caller:
        """The caller a bearer token stands for. With tenants configured a missing or unknown key is a 401; on an
        open service any other key is ignored (clients such as the openai SDK always send one)."""
        digest = key_digest(token) if token else ""
        # Compare against every known digest in constant time: the time taken says nothing of which matched.
        tenant, admin = None, False
        for known, name in self._tenants.items():
            if hmac.compare_digest(known, digest):
                tenant = name
        for known in self._admins:
            if hmac.compare_digest(known, digest):
                admin = True
        if tenant is not None or admin:
            return Caller(tenant=tenant, admin=admin, key_hint=digest[:6])
        if self.is_open:
            return Caller(tenant=None)
        if not token:
            raise AuthenticationError("this service needs an API key: send 'Authorization: Bearer <key>'")
        raise AuthenticationError("the API key is not valid")

    def require_admin(self, caller: Caller) -> None:
        """Admin endpoints: an admin key; anyone on a service with no key at all."""
        if caller.admin or (self.is_open and not self._admins):
            return
        if caller.tenant is None:
            raise AuthenticationError("this endpoint needs 'Authorization: Bearer <admin key>'")
        raise PermissionDeniedError("this endpoint needs an admin key (auth.admin_keys)")

    # -- what it gets ---------------------------------------------------------------------

    def namespace(self, caller: Caller, requested: str | None) -> str | None:
        """The cache namespace of a request (None: the cache's default namespace)."""
        if caller.tenant is None:
            return requested
        own = self.config.namespace_of(caller.tenant)
        return f"{own}:{requested}" if requested else own

    def priority(self, caller: Caller, header: str | None) -> Priority:
        """The request's class: the header's, within its tenant's best class; else the tenant's; else the default."""
        best = self.config.tenants[caller.tenant].priority if caller.tenant is not None else None
        return resolve_priority(self.priority_config, header, ceiling=best)

    # -- how much -------------------------------------------------------------------------

    async def admit(self, caller: Caller) -> None:
        """Count one request against its tenant's limits; a 429 with Retry-After when one is spent."""
        if caller.tenant is None:
            return
        limits, who = self._limits[caller.tenant], caller.tenant
        if limits.requests is not None and not await self._limiter.hit(limits.requests, "requests", who):
            raise RateLimitError(f"tenant '{who}' sent more than its {limits.requests.amount} request(s) per "
                                 f"{limits.requests.multiples} s", retry_after_s=await self._reset(limits.requests,
                                                                                                  "requests", who))
        if limits.tokens is not None and not await self._limiter.test(limits.tokens, "tokens", who):
            raise RateLimitError(f"tenant '{who}' used its {limits.tokens.amount} tokens of this minute",
                                 retry_after_s=await self._reset(limits.tokens, "tokens", who))
        if limits.budget_ms is not None and not await self._limiter.test(limits.budget_ms, "budget", who):
            window = self.config.tenants[who].budget_window
            raise QuotaExceededError(f"tenant '{who}' spent its budget of {limits.budget_ms.amount / 1000:g} "
                                     f"engine-seconds for this {window}",
                                     retry_after_s=await self._reset(limits.budget_ms, "budget", who))

    async def spend(self, tenant: str, tokens: int, engine_s: float) -> None:
        """What an answered request used: its tokens and its engine-seconds, against its tenant's limits."""
        limits = self._limits.get(tenant)
        if limits is None:
            return
        # A fixed window's hit always adds its cost, also past the limit: the next request is the one refused.
        if limits.tokens is not None and tokens > 0:
            await self._limiter.hit(limits.tokens, "tokens", tenant, cost=tokens)
        spent_ms = round(engine_s * 1000)
        if limits.budget_ms is not None and spent_ms > 0:
            await self._limiter.hit(limits.budget_ms, "budget", tenant, cost=spent_ms)

    async def usage(self, tenant: str) -> dict[str, Any]:
        """What is left of a tenant's limits in their current windows."""
        out: dict[str, Any] = {}
        for name, item in (("requests", self._limits[tenant].requests), ("tokens", self._limits[tenant].tokens),
                           ("budget_ms", self._limits[tenant].budget_ms)):
            if item is not None:
                stats = await self._limiter.get_window_stats(item, name, tenant)
                out[name] = {"limit": item.amount, "remaining": stats.remaining,
                             "reset_in_s": round(max(0.0, stats.reset_time - time.time()), 1)}
        return out

    async def _reset(self, item: RateLimitItem, *ids: str) -> float:
        stats = await self._limiter.get_window_stats(item, *ids)
        return max(1.0, stats.reset_time - time.time())

    def spend_later(self, tenant: str, tokens: int, engine_s: float) -> None:
        """`spend` in a task of its own (for the pipeline's observer, which must return at once)."""
        task = asyncio.get_running_loop().create_task(self.spend(tenant, tokens, engine_s))
        self._tasks.add(task)
        task.add_done_callback(self._spent)

    def _spent(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.warning("counting a tenant's usage failed: %r", task.exception())


class TenantMeter(Observer):
    """Spends every answered request's tokens and engine-seconds against its tenant's limits."""

    def __init__(self, tenancy: Tenancy) -> None:
        self.tenancy = tenancy

    def observe(self, state: RequestState) -> None:
        if state.tenant is None or state.result is None:
            return
        usage = state.result.usage
        engine_s = state.cost.engine_s()
        self.tenancy.spend_later(state.tenant, usage.prompt_tokens + usage.completion_tokens, engine_s)
