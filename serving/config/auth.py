"""Configuration of API keys and tenants: who may call, as whom, and how much (`serving.tenancy`).

No plain key is ever written here: a key is given as its sha256 digest, or as the name of an
environment variable or a file (a mounted Kubernetes Secret) that holds it, read once at start-up.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

_HEX64 = r"^[0-9a-f]{64}$"
# A tenant's namespace prefixes its clients' sub-namespaces with ':' (serving.tenancy), so it holds no ':'.
_TENANT_NAMESPACE = r"^[A-Za-z0-9_.\-]{1,32}$"


def key_digest(api_key: str) -> str:
    """The sha256 hex digest of an API key: how the configuration names keys."""
    return hashlib.sha256(api_key.encode()).hexdigest()


class KeySource(BaseModel):
    """One API key, without its plain text: exactly one of `sha256`, `env`, `file`."""

    model_config = ConfigDict(extra="forbid")

    sha256: str | None = Field(None, pattern=_HEX64, description="The key's sha256 hex digest "
                               "(`python -c \"import hashlib;print(hashlib.sha256(b'sk-...').hexdigest())\"`).")
    env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                            description="Name of an environment variable holding the key (e.g. set from a Kubernetes "
                            "Secret with secretKeyRef).")
    file: Path | None = Field(None, description="A file holding the key (e.g. a Kubernetes Secret mounted as a "
                              "volume); surrounding white space is ignored.")

    @model_validator(mode="after")
    def _one_source(self) -> KeySource:
        given = [name for name in ("sha256", "env", "file") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"a key names exactly one of sha256, env, file (got {given or 'none'})")
        return self

    def digest(self) -> str:
        """The key's sha256 digest, reading `env` or `file` now; a missing or empty source is an error."""
        if self.sha256 is not None:
            return self.sha256
        if self.env is not None:
            value = os.environ.get(self.env, "")
            where = f"environment variable {self.env}"
        else:
            assert self.file is not None
            try:
                value = self.file.read_text()
            except OSError as exc:
                raise ValueError(f"API key file {self.file} cannot be read: {exc.strerror}") from None
            where = f"file {self.file}"
        value = value.strip()
        if not value:
            raise ValueError(f"the API key in {where} is missing or empty")
        return key_digest(value)

    def describe(self) -> str:
        """Where the key comes from, safe to log (never the key)."""
        if self.sha256 is not None:
            return f"sha256 {self.sha256[:8]}…"
        return f"env {self.env}" if self.env is not None else f"file {self.file}"


class TenantConfig(BaseModel):
    """A tenant: its keys, the cache namespace the server gives it, its priority class and its limits."""

    model_config = ConfigDict(extra="forbid")

    keys: list[KeySource] = Field(min_length=1, description="The tenant's API keys (several allow rotation).")
    namespace: str | None = Field(
        None, pattern=_TENANT_NAMESPACE, description="The tenant's cache namespace (default: the tenant's name). "
        "A request's `cache.namespace` becomes a sub-namespace `<namespace>:<name>`; it never reaches another "
        "tenant's entries.")
    priority: str | None = Field(
        None, description="The best priority class the tenant may use, and its default: the priority header may ask "
        "for a lower class, never a higher one. None: the default class, and the header may name any.")
    requests_per_s: float | None = Field(
        None, gt=0, description="Requests per second the tenant may send (per Ingress replica unless "
        "auth.limits_storage is shared); more get a 429 with Retry-After.")
    tokens_per_min: int | None = Field(
        None, ge=1, description="Prompt plus completion tokens per minute; once spent, requests get a 429 with "
        "Retry-After until the minute's window passes.")
    budget_engine_s: float | None = Field(
        None, gt=0, description="Engine-seconds (the cost ledger's unit: all tiers, thrown-away Scout work "
        "included) the tenant may spend per budget_window; then a 429 'insufficient_quota'.")
    budget_window: Literal["hour", "day", "month"] = Field("day", description="The period of budget_engine_s.")
    strategy_budget_s: float | None = Field(
        None, gt=0, description="Most engine seconds an inference strategy may spend on one of the tenant's "
        "requests (its `strategy.budget` may only lower it); over it, the best strategy that fits runs.")


class AuthConfig(BaseModel):
    """API keys and tenants. Without tenants the service runs open (the laptop default) and says so at start;
    without admin keys too, so do the administration endpoints."""

    model_config = ConfigDict(extra="forbid")

    tenants: dict[str, TenantConfig] = Field(
        default_factory=dict, description="Tenants by name; every /v1 request must carry one of their keys "
        "(`Authorization: Bearer <key>`) once any tenant is configured.")
    admin_keys: list[KeySource] = Field(
        default_factory=list, description="Keys of the administration endpoints: DELETE /v1/cache, "
        "/v1/cache/stats, /v1/ledger, /v1/quality (every invalidation is logged with the key that asked).")
    limits_storage: str = Field(
        "memory://", description="Where rate limits and budgets are counted, as a `limits` storage URI: "
        "'memory://' counts per Ingress replica; 'redis://host:6379' shares them across replicas.")

    @model_validator(mode="after")
    def _distinct_namespaces(self) -> AuthConfig:
        seen: dict[str, str] = {}
        for name in self.tenants:
            namespace = self.namespace_of(name)
            if not re.match(_TENANT_NAMESPACE, namespace):
                raise ValueError(f"tenant '{name}': its name is not a namespace; give it a `namespace` matching "
                                 f"{_TENANT_NAMESPACE}")
            if namespace in seen:
                raise ValueError(f"tenants '{seen[namespace]}' and '{name}' share the namespace '{namespace}'")
            seen[namespace] = name
        return self

    def namespace_of(self, tenant: str) -> str:
        """The cache namespace of `tenant`."""
        return self.tenants[tenant].namespace or tenant
