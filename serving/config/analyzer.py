"""Configuration of the request analyzer (it runs inside the Ingress: no deployment of its own)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from serving.config.moved import DEPLOYMENT_KEYS, reject_moved

DEFAULT_OUTPUT_TOKENS = {"short_answer": 16, "chat": 256, "math": 320, "code": 512, "reasoning": 512}

# Where the keys this section used to hold went (a profile naming one fails with the answer).
_MOVED = {
    "priority_header": "moved to priority.priority_header",
    "default_priority": "moved to priority.default_priority",
    "priorities": "moved to priority.classes",
    "tenant_priorities": "moved to auth.tenants.<name>.priority",
    "load": "moved to the top-level load section",
    "batching": "moved to load.batching",
    **{key: "is gone: the analyzer runs inside the Ingress (size it with api.deployment)"
       for key in (*DEPLOYMENT_KEYS, "max_batch_size", "batch_wait_timeout_s")},
}


class AnalyzerConfig(BaseModel):
    """The request analyzer: profile, complexity and strategy of each request (a `RoutePlan`)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(
        False, description="Analyze requests before the cache; send predicted-hard ones straight to the Validator."
    )
    artifact: Path | None = Field(
        None, description="Complexity model JSON (default: serving/analyzer/complexity-v1.json, from "
        "scripts/train_analyzer.py)."
    )
    direct_threshold: float = Field(
        0.4, ge=0, le=1, description="Complexity (P(Scout not good enough)) at or above which an 'auto' request "
        "skips the Scout (strategy validator_direct); 1 never skips it. 0.4 sends ~1% direct, mostly hard "
        "(scripts/eval_analyzer.py)."
    )
    tokenizer: str | None = Field(
        None, description="Model whose tokenizer counts prompt tokens (default: the Validator's)."
    )
    timeout_s: float = Field(
        1.0, gt=0, description="An analysis slower than this is abandoned; the request takes the default path."
    )
    expected_output_tokens: dict[str, int] = Field(
        default_factory=lambda: dict(DEFAULT_OUTPUT_TOKENS),
        description="Expected answer length per task kind (short_answer, chat, math, code, reasoning), the "
        "max_tokens prediction for resource planning.",
    )

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        return reject_moved(data, "analyzer", _MOVED)

    @model_validator(mode="after")
    def _every_task_kind(self) -> AnalyzerConfig:
        missing = sorted(set(DEFAULT_OUTPUT_TOKENS) - set(self.expected_output_tokens))
        if missing:
            raise ValueError(f"expected_output_tokens lacks task kinds {missing}")
        return self
