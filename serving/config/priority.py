"""Configuration of priority classes and tenancy: which class a request belongs to (`serving.priority`)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from serving.config.moved import reject_moved


class PriorityConfig(BaseModel):
    """Priority classes, their vLLM priorities, and how a request names its class.

    A request's class is the one named in the `priority_header` header, else its tenant's class
    (`auth.tenants.<name>.priority`), else `default_priority`; a tenant's class is also the best it
    may name, so a batch tenant cannot promote itself. The Ingress's own queue (`api.max_in_flight`)
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

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        return reject_moved(data, "priority", {"tenants": "moved to auth.tenants.<name>.priority (with the tenant's "
                                                          "keys)"})

    @model_validator(mode="after")
    def _known_classes(self) -> PriorityConfig:
        if self.default_priority not in self.classes:
            raise ValueError(f"default_priority '{self.default_priority}' is not one of the classes "
                             f"{sorted(self.classes)}")
        return self
