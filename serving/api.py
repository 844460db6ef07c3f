"""OpenAI-compatible request and response schemas, and the route trace.

Requests are validated strictly, the way the OpenAI API does it: an unknown field is a
400 ("Unrecognized request argument supplied"), a known field this service does not
implement is a 400 that names it, and bounds are checked before any engine is called.
Responses reuse the `openai` SDK's own pydantic types, so what we send is what the SDK
parses; the route trace rides along as an extra `route` field.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from serving.errors import InvalidRequestError, UnsupportedParameterError

Tier = Literal["scout", "validator"]
# What a client may put in `model`: the optimizer decides, or it forces a tier.
ROUTING_MODELS = ("auto", "scout", "validator")


class _Strict(BaseModel):
    # Strict types, as OpenAI checks them: `"max_tokens": true` or `"temperature": "0.5"` is a 400,
    # not a silent 1 or 0.5 (an int is still a valid float).
    model_config = ConfigDict(extra="forbid", strict=True)


class TextPart(_Strict):
    """A text content part (the only kind of part this service accepts)."""

    type: Literal["text"] = Field(description="Always 'text'.")
    text: str = Field(description="The text.")


class ChatMessage(_Strict):
    """One message of a conversation."""

    role: Literal["system", "developer", "user", "assistant"] = Field(description="Who wrote it.")
    content: str | list[TextPart] | None = Field(description="Text, or a list of text parts.")
    name: str | None = Field(None, description="Optional participant name.")

    @field_validator("content", mode="before")
    @classmethod
    def _only_text(cls, v: Any) -> Any:
        if isinstance(v, list):
            for part in v:
                if isinstance(part, dict) and part.get("type") not in (None, "text"):
                    raise UnsupportedParameterError(
                        f"content parts of type '{part.get('type')}' are not supported; send text",
                        param="messages.content",
                    )
        return v

    def text(self) -> str:
        """The message content as one string."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class StreamOptions(_Strict):
    """Options of a streamed response."""

    include_usage: bool = Field(False, description="Send a last chunk with token usage.")


Stop = Annotated[str | list[str] | None, Field(description="Up to 4 sequences where generation stops.")]


# Namespaces and tags end up in payload indexes and in DELETE /v1/cache query strings.
_NAME = r"^[A-Za-z0-9_.:\-]{1,64}$"


class CacheControl(_Strict):
    """Per-request semantic cache control (the `cache` extension field)."""

    mode: Literal["use", "bypass", "refresh"] = Field(
        "use",
        description="'use': look up, then admit; 'bypass': neither; 'refresh': skip the lookup, admit the new answer.",
    )
    namespace: str | None = Field(
        None, pattern=_NAME, description="Tenant or application whose entries this request may see and write."
    )
    ttl_s: float | None = Field(None, gt=0, description="Lifetime of the entry this request admits (seconds).")
    allow_sampled: bool = Field(
        False, description="Cache this request although it samples (temperature > 0, no seed)."
    )
    tags: list[Annotated[str, Field(pattern=_NAME)]] = Field(
        default_factory=list, max_length=8, description="Labels stored with the entry (invalidate by tag)."
    )


class StrategySpec(_Strict):
    """How to spend compute on this request (the `strategy` extension field; see docs/strategies.md)."""

    name: Literal["greedy", "best_of_n", "majority_vote", "weighted_vote", "search", "auto"] = Field(
        description="'greedy': the cascade as usual; 'majority_vote' / 'weighted_vote' / 'best_of_n': n sampled "
        "candidates, voted on by their final answers (weighted by the Validator's score) or the one the Validator "
        "scores highest; 'search': a step-level search, the Validator scoring partial solutions and the Scout "
        "expanding the best; 'auto': the strategy the learned frontier predicts reaches the target at least cost.")
    n: int = Field(4, ge=1, le=64, description="Candidates to sample (for 'search': expansions in all).")
    budget: float | None = Field(
        None, gt=0, description="Most engine seconds (the cost ledger's unit, all tiers) to spend; over it, the "
        "best strategy predicted to fit is run instead (the trace says so), never an error.")


class _SamplingFields(_Strict):
    """Fields shared by chat and text completions."""

    model: str = Field("auto", description="'auto' lets the optimizer decide; 'scout'/'validator' force a tier.")
    max_tokens: int | None = Field(None, ge=1, description="Most tokens to generate.")
    temperature: float = Field(1.0, ge=0, le=2, description="Sampling temperature; 0 is greedy.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    n: int = Field(1, ge=1, le=64, description="Number of choices (one shared prefill); n > 1 is answered by the "
                   "Validator on 'auto' (or by the tier named), never from the cache.")
    stream: bool = Field(False, description="Stream the answer as server-sent events.")
    stream_options: StreamOptions | None = Field(None, description="Options for streaming.")
    stop: Stop = None
    seed: int | None = Field(None, description="Seed for reproducible sampling.")
    presence_penalty: float = Field(0.0, ge=-2, le=2, description="Penalty for tokens already present.")
    frequency_penalty: float = Field(0.0, ge=-2, le=2, description="Penalty by token frequency.")
    logit_bias: dict[str, float] | None = Field(None, description="Not supported (must be empty).")
    user: str | None = Field(None, description="End-user identifier (recorded, not used for routing).")
    # Extension (like vLLM's extra params; the openai SDK sends it through `extra_body`).
    confidence_threshold: float | None = Field(
        None, ge=0, le=1, description="Per-request override of the Scout confidence threshold."
    )
    cache: CacheControl | None = Field(None, description="Semantic cache control for this request.")
    strategy: StrategySpec | None = Field(None, description="Inference strategy for this request (extension).")

    @model_validator(mode="after")
    def _supported(self) -> _SamplingFields:
        if self.strategy is not None and self.strategy.name != "greedy" and self.n != 1:
            raise InvalidRequestError("a strategy answers with one choice: send n=1 with it", param="n")
        if self.strategy is not None and self.strategy.name != "greedy" and getattr(self, "logprobs", None):
            raise InvalidRequestError("logprobs are not returned for a strategy's answer", param="logprobs")
        if self.logit_bias:
            raise UnsupportedParameterError("logit_bias is not supported", param="logit_bias")
        if self.stream_options is not None and not self.stream:
            raise InvalidRequestError("stream_options is only allowed when stream is true", param="stream_options")
        return self

    def stop_list(self) -> list[str]:
        """`stop` as a list."""
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def include_usage(self) -> bool:
        """Whether a streamed response ends with a usage chunk."""
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_SamplingFields):
    """`POST /v1/chat/completions`."""

    messages: list[ChatMessage] = Field(description="The conversation so far (at least one message).")
    max_completion_tokens: int | None = Field(None, ge=1, description="Alias of max_tokens (newer SDKs).")
    logprobs: bool = Field(False, description="Return the log-probability of each output token.")
    top_logprobs: int | None = Field(None, ge=0, le=20, description="Alternatives per token with logprobs.")
    tools: list[Any] | None = Field(None, description="Not supported.")
    tool_choice: Any = Field(None, description="Not supported.")
    functions: list[Any] | None = Field(None, description="Not supported.")
    function_call: Any = Field(None, description="Not supported.")
    response_format: dict[str, Any] | None = Field(None, description="Only {'type': 'text'} is supported.")
    parallel_tool_calls: bool | None = Field(None, description="Ignored (no tools).")

    @model_validator(mode="after")
    def _chat_rules(self) -> ChatCompletionRequest:
        if not self.messages:
            raise InvalidRequestError("messages must contain at least one message", param="messages")
        for name in ("tools", "functions"):
            if getattr(self, name):
                raise UnsupportedParameterError(f"{name} (tool calling) is not supported", param=name)
        for name in ("tool_choice", "function_call"):
            if getattr(self, name) not in (None, "none"):
                raise UnsupportedParameterError(f"{name} is not supported", param=name)
        if self.response_format and self.response_format.get("type") != "text":
            raise UnsupportedParameterError("only response_format {'type': 'text'} is supported",
                                            param="response_format")
        if self.top_logprobs is not None and not self.logprobs:
            raise InvalidRequestError("top_logprobs requires logprobs to be true", param="top_logprobs")
        if self.max_tokens is not None and self.max_completion_tokens is not None \
                and self.max_tokens != self.max_completion_tokens:
            raise InvalidRequestError("max_tokens and max_completion_tokens disagree", param="max_tokens")
        return self

    def requested_max_tokens(self) -> int | None:
        """max_tokens, from whichever of the two spellings was used."""
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_SamplingFields):
    """`POST /v1/completions` (legacy text completion)."""

    prompt: str | list[str] = Field(description="The prompt (one string, or a list holding one).")
    logprobs: int | None = Field(None, ge=0, le=5, description="Return this many alternatives per token.")
    echo: bool = Field(False, description="Not supported.")
    best_of: int | None = Field(None, description="Not supported (must be 1).")
    suffix: str | None = Field(None, description="Not supported.")

    @model_validator(mode="after")
    def _completion_rules(self) -> CompletionRequest:
        if isinstance(self.prompt, list) and len(self.prompt) != 1:
            raise UnsupportedParameterError("send exactly one prompt per request", param="prompt")
        if self.echo:
            raise UnsupportedParameterError("echo is not supported", param="echo")
        if self.best_of not in (None, 1):
            raise UnsupportedParameterError("best_of is not supported", param="best_of")
        if self.suffix:
            raise UnsupportedParameterError("suffix is not supported", param="suffix")
        return self

    def prompt_text(self) -> str:
        """The single prompt."""
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    def requested_max_tokens(self) -> int | None:
        """max_tokens as sent."""
        return self.max_tokens


# ---------------------------------------------------------------------------------------
# Route trace: one record per stage of the request path, returned with every response.


class StageRecord(BaseModel):
    """What one stage of the request path decided, and how long it took."""

    stage: str = Field(description="'analyzer', 'cache', 'coalesced', 'scout', 'validator' or 'admission'.")
    decision: str = Field(description="What the stage decided, e.g. 'confident', 'escalate', 'answered'.")
    latency_ms: float = Field(description="Wall time of the stage in milliseconds.")
    detail: dict[str, Any] = Field(default_factory=dict, description="Stage-specific figures.")


class RouteTrace(BaseModel):
    """How a request was served: returned as the `route` object and `x-infopt-route` header."""

    tier: str | None = Field(None, description="Who produced the answer: 'cache', 'scout' or 'validator'.")
    requested_model: str = Field("auto", description="The `model` the client asked for.")
    reason: str | None = Field(None, description="Why that tier answered.")
    confidence: float | None = Field(None, description="Scout confidence score, when the Scout ran.")
    agreement: float | None = Field(
        None, description="Calibrated probability that the Scout's answer agrees with the Validator's, when the "
        "profile is calibrated and the Scout ran.")
    calibration: str | None = Field(None, description="The calibration's version, or 'uncalibrated'.")
    threshold: float | None = Field(
        None, description="The bound the Scout's score was held to: on `agreement` when calibrated, on "
        "`confidence` otherwise (null: no Scout answer could be kept).")
    confidence_method: str | None = Field(None, description="How confidence was computed.")
    stages: list[StageRecord] = Field(default_factory=list, description="One record per stage, in order.")
    cost: dict[str, dict[str, float]] | None = Field(
        None, description="Engine work per tier for this request (prompt and completion tokens, engine seconds), "
        "including work thrown away, such as a Scout answer that escalated.")
    total_ms: float | None = Field(None, description="End-to-end time inside the service.")


def new_id(prefix: str) -> str:
    """An OpenAI-style object id, e.g. ``chatcmpl-...``."""
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


# ---------------------------------------------------------------------------------------
# Errors, as the OpenAPI schema declares them.


class ErrorDetail(BaseModel):
    """What went wrong."""

    message: str = Field(description="A sentence for a person.")
    type: str = Field(description="invalid_request_error, authentication_error, service_unavailable, timeout, ...")
    param: str | None = Field(None, description="The request field at fault, when one is.")
    code: str | None = Field(None, description="A machine-readable code, e.g. context_length_exceeded.")


class ErrorResponse(BaseModel):
    """OpenAI's error shape; the route trace so far rides along when the request got that far."""

    error: ErrorDetail
    route: RouteTrace | None = Field(None, description="The stages the request passed before the error.")


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in ((400, "Invalid request (a field is missing, malformed, unsupported or out of bounds)"),
                         (401, "Missing or wrong API key"), (403, "A tenant's key on an admin endpoint"),
                         (404, "Unknown model or endpoint"), (413, "Request body too large"),
                         (429, "Over a rate limit, a budget or the queue: retry after Retry-After seconds"),
                         (503, "A backend is unavailable, or no queue slot came in time (Retry-After)"),
                         (504, "A backend did not answer in time"))
}
