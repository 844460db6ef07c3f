"""`LLMEngine` over a `ray.serve.llm` LLMServer deployment (vLLM inside).

The LLMServer speaks vLLM's OpenAI protocol objects: a non-streamed call yields one
response (or an `ErrorResponse`), a streamed call yields lists of SSE strings. This
module turns both into `Generation` / `GenerationChunk` and engine errors into the
exceptions of `serving.errors`. Ray and vLLM are imported when an engine is built,
never at import time.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from serving.engines.base import Generation, GenerationChunk, GenerationRequest, LLMEngine, TokenLogprob, Usage
from serving.errors import (
    ContextLengthExceededError,
    EngineUnavailableError,
    InferenceOptimizerError,
    InvalidRequestError,
)

_CONTEXT_MARKERS = ("maximum context length", "max_model_len", "context length", "input_tokens")


def error_from_engine(error: Any) -> InferenceOptimizerError:
    """Map a vLLM `ErrorResponse` (or its dict) to our exception tree."""
    info = getattr(error, "error", None) or (error.get("error") if isinstance(error, dict) else None) or error
    get = (lambda k: info.get(k)) if isinstance(info, dict) else (lambda k: getattr(info, k, None))
    message = str(get("message") or "engine error")
    code = get("code")
    try:
        status = int(code)
    except (TypeError, ValueError):
        status = 500
    if 400 <= status < 500:
        if any(m in message for m in _CONTEXT_MARKERS):
            return ContextLengthExceededError(message, param="messages")
        return InvalidRequestError(message, param=get("param"))
    return EngineUnavailableError(f"engine error: {message}")


def _logprobs_from_chat(lp: Any) -> list[TokenLogprob] | None:
    if not lp or not lp.get("content"):
        return None if not lp else []
    return [
        TokenLogprob(
            token=t["token"],
            logprob=t["logprob"],
            top=[(a["token"], a["logprob"]) for a in t.get("top_logprobs") or []],
        )
        for t in lp["content"]
    ]


def _logprobs_from_completion(lp: Any) -> list[TokenLogprob] | None:
    if not lp or lp.get("tokens") is None:
        return None
    tops = lp.get("top_logprobs") or [None] * len(lp["tokens"])
    return [
        TokenLogprob(token=tok, logprob=lpv, top=sorted((top or {}).items(), key=lambda kv: -kv[1]))
        for tok, lpv, top in zip(lp["tokens"], lp["token_logprobs"], tops, strict=False)
    ]


def _usage(u: dict[str, Any] | None) -> Usage | None:
    if not u:
        return None
    return Usage(prompt_tokens=u.get("prompt_tokens") or 0, completion_tokens=u.get("completion_tokens") or 0)


class ServeLLMEngine(LLMEngine):
    """Calls an LLMServer deployment through its DeploymentHandle."""

    def __init__(self, handle: Any, model_id: str) -> None:
        from ray.serve.llm import openai_api_models as oai

        self._handle = handle
        self._oai = oai
        self.model_id = model_id

    def _to_vllm(self, req: GenerationRequest, stream: bool) -> Any:
        common: dict[str, Any] = dict(
            model=self.model_id,
            max_tokens=req.max_tokens,
            temperature=req.temperature,
            top_p=req.top_p,
            seed=req.seed,
            stop=req.stop or None,
            presence_penalty=req.presence_penalty,
            frequency_penalty=req.frequency_penalty,
            stream=stream,
        )
        if req.request_id:
            common["request_id"] = req.request_id
        if stream:
            common["stream_options"] = {"include_usage": True}
        if req.kind == "chat":
            if req.logprobs:
                common.update(logprobs=True, top_logprobs=req.top_logprobs)
            return self._oai.ChatCompletionRequest(messages=req.messages, **common)
        if req.logprobs:
            common["logprobs"] = req.top_logprobs
        return self._oai.CompletionRequest(prompt=req.prompt, **common)

    def _method(self, req: GenerationRequest) -> Any:
        method = self._handle.chat if req.kind == "chat" else self._handle.completions
        return method.options(stream=True)

    async def _responses(self, req: GenerationRequest, stream: bool) -> AsyncIterator[Any]:
        try:
            vreq = self._to_vllm(req, stream)
        except ValueError as exc:  # vLLM's own validation (pydantic) of the request
            raise InvalidRequestError(str(exc)) from None
        try:
            async for item in self._method(req).remote(vreq):
                yield item
        except InferenceOptimizerError:
            raise
        except Exception as exc:  # a dead replica, a Ray error, an engine crash
            raise EngineUnavailableError(f"{self.model_id}: {type(exc).__name__}: {exc}"[:500]) from exc

    async def generate(self, request: GenerationRequest) -> Generation:
        async for item in self._responses(request, stream=False):
            if _is_error(item):
                raise error_from_engine(item)
            data = item.model_dump() if hasattr(item, "model_dump") else item
            choice = data["choices"][0]
            if request.kind == "chat":
                text = choice["message"].get("content") or ""
                tokens = _logprobs_from_chat(choice.get("logprobs"))
            else:
                text = choice.get("text") or ""
                tokens = _logprobs_from_completion(choice.get("logprobs"))
            return Generation(
                text=text,
                finish_reason=choice.get("finish_reason"),
                usage=_usage(data.get("usage")) or Usage(),
                tokens=tokens if request.logprobs else None,
                model=self.model_id,
            )
        raise EngineUnavailableError(f"{self.model_id}: the engine returned no response")

    async def stream(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        async for batch in self._responses(request, stream=True):
            items = batch if isinstance(batch, list) else [batch]
            for item in items:
                if _is_error(item):
                    raise error_from_engine(item)
                for data in _sse_payloads(item):
                    if "error" in data:
                        raise error_from_engine(data)
                    chunk = self._chunk(data, request)
                    if chunk is not None:
                        yield chunk

    def _chunk(self, data: dict[str, Any], request: GenerationRequest) -> GenerationChunk | None:
        usage = _usage(data.get("usage"))
        if not data.get("choices"):
            return GenerationChunk(usage=usage) if usage else None
        choice = data["choices"][0]
        if request.kind == "chat":
            text = (choice.get("delta") or {}).get("content") or ""
            tokens = _logprobs_from_chat(choice.get("logprobs"))
        else:
            text = choice.get("text") or ""
            tokens = _logprobs_from_completion(choice.get("logprobs"))
        return GenerationChunk(
            text=text, finish_reason=choice.get("finish_reason"), tokens=tokens if request.logprobs else None,
            usage=usage,
        )

    async def check_health(self) -> None:
        try:
            await self._handle.check_health.remote()
        except Exception as exc:
            raise EngineUnavailableError(f"{self.model_id} is not healthy: {type(exc).__name__}") from exc


def _is_error(item: Any) -> bool:
    """An `ErrorResponse` (the engine returns vLLM's class, not Ray's public subclass of it)."""
    return getattr(item, "error", None) is not None or (isinstance(item, dict) and "error" in item)


def _sse_payloads(item: Any) -> list[dict[str, Any]]:
    """JSON payloads of one or more `data: ...` SSE events ([DONE] is dropped)."""
    if isinstance(item, dict):
        return [item]
    if hasattr(item, "model_dump"):
        return [item.model_dump()]
    out = []
    for line in str(item).splitlines():
        line = line.strip()
        if not line.startswith("data:"):
            continue
        payload = line[5:].strip()
        if payload and payload != "[DONE]":
            out.append(json.loads(payload))
    return out
