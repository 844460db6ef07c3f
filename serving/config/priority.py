"""Configuration of priority classes and tenancy: which class a request belongs to (`serving.priority`)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class PriorityConfig(BaseModel):
    """Priority classes, their vLLM priorities, and how a request names its class.

    A request's class is, in order: its API key's tenant (`tenants`), the class named in the
    `priority_header` header, `default_priority`. The Ingress's own queue (`api.max_in_flight`)
    and the engines (`<engine>.scheduling_policy` 'priority') serve lower values first.
    """

    model_config = ConfigDict(extra="forbid")

    priority_header: str = Field("x-infopt-priority", description="Request header naming the priority class.")
    default_priority: str = Field("interactive", description="Priority class of requests that name none.")
    classes: dict[str, int] = Field(
        default_factory=lambda: {"interactive": 0, "batch": 10},
        description="Priority classes and their vLLM priority (lower is served first; the engines apply it with "
        "<engine>.scheduling_policy 'priority', the default).",
    )
    tenants: dict[str, str] = Field(
        default_factory=dict,
        description="Priority class per API key, keyed by the key's sha256 hex digest (configs hold no secrets); "
        "it wins over the header, so a tenant cannot promote itself.",
    )

    @model_validator(mode="after")
    def _known_classes(self) -> PriorityConfig:
        if self.default_priority not in self.classes:
            raise ValueError(f"default_priority '{self.default_priority}' is not one of the classes "
                             f"{sorted(self.classes)}")
        unknown = sorted(set(self.tenants.values()) - set(self.classes))
        if unknown:
            raise ValueError(f"tenants name unknown classes {unknown} (known: {sorted(self.classes)})")
        return self
