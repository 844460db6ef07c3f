"""The OpenAI-compatible service: validated requests in, OpenAI responses and SSE out.

This is everything the ingress deployment does, without Ray or FastAPI: it parses and
bounds requests, turns them into `GenerationRequest`s, runs them through the `Pipeline`
(`serving.pipeline`), and shapes the answer with the `openai` SDK's own types (so the SDK
parses what we send).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

from openai.types import Completion, CompletionChoice, CompletionUsage
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from pydantic import BaseModel, ValidationError

from serving.api import (
    ROUTING_MODELS,
    CacheControl,
    ChatCompletionRequest,
    CompletionRequest,
    RouteTrace,
    StrategySpec,
    new_id,
)
from serving.cache.store import Selector
from serving.config import ApiConfig, AuthConfig
from serving.engines.base import GenerationChunk, GenerationRequest, LLMEngine, TokenLogprob, Usage
from serving.errors import (
    EngineTimeoutError,
    InferenceOptimizerError,
    InvalidRequestError,
    ModelNotFoundError,
    to_openai_error,
)
from serving.pipeline import Pipeline, Routed, RoutedStream
from serving.priority import Priority
from serving.tenancy import Caller, Tenancy

T = TypeVar("T")
_FINISH = {"stop", "length", "tool_calls", "content_filter", "function_call"}


async def _until(chunks: AsyncIterator[GenerationChunk], deadline: float | None, timeout_s: float | None
                 ) -> AsyncIterator[GenerationChunk]:
    """The chunks of a stream until its deadline; then a 504 error (sent as an event: the headers are gone)."""
    while True:
        if deadline is None:
            chunk = await anext(chunks, None)
        else:
            remaining = deadline - asyncio.get_running_loop().time()
            try:
                chunk = await asyncio.wait_for(anext(chunks, None), max(0.0, remaining))
            except TimeoutError:
                raise EngineTimeoutError(f"the request took longer than {timeout_s:g} s (api.request_timeout_s)"
                                         ) from None
        if chunk is None:
            return
        yield chunk


def _tenant(caller: Caller | None) -> str | None:
    return caller.tenant if caller is not None else None


def parse_request(model: type[BaseModel], body: Any) -> Any:
    """Validate a decoded JSON body; every failure becomes an `InvalidRequestError` naming the field."""
    if not isinstance(body, dict):
        raise InvalidRequestError("the request body must be a JSON object")
    _check_text(body, "")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            raise InvalidRequestError(f"Unrecognized request argument supplied: {loc}", param=loc) from None
        if err["type"] == "missing":
            raise InvalidRequestError(f"'{loc}' is a required property", param=loc) from None
        raise InvalidRequestError(f"invalid value for '{loc}': {err['msg']}", param=loc) from None


def selector_from_query(query: dict[str, str]) -> Selector:
    """The entries a `DELETE /v1/cache?...` names (namespace, model, older_than_s, tag, or all=true)."""
    unknown = set(query) - {"namespace", "model", "older_than_s", "tag", "all"}
    if unknown:
        raise InvalidRequestError(f"unknown query parameter(s): {', '.join(sorted(unknown))}",
                                  param=sorted(unknown)[0])
    older_than = None
    if "older_than_s" in query:
        try:
            age = float(query["older_than_s"])
        except ValueError:
            raise InvalidRequestError("older_than_s must be a number of seconds", param="older_than_s") from None
        if not age >= 0:  # also refuses NaN
            raise InvalidRequestError("older_than_s must not be negative", param="older_than_s")
        older_than = time.time() - age
    selector = Selector(namespace=query.get("namespace"), model=query.get("model"), tag=query.get("tag"),
                        older_than=older_than)
    if selector.is_all() and query.get("all", "").lower() != "true":
        raise InvalidRequestError("say which entries to delete (namespace, model, older_than_s, tag) or all=true")
    return selector


def _check_text(value: Any, where: str) -> None:
    """A 400 for a string that is not valid Unicode: JSON's escapes can spell a lone surrogate
    (`"\\ud800"`), which no encoder, tokenizer or store will take later on."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidRequestError(f"'{where or 'body'}' is not valid Unicode (a lone surrogate)",
                                      param=where or None) from None
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_text(k, where)
            _check_text(v, f"{where}.{k}" if where else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_text(v, f"{where}.{i}")


def _finish_reason(reason: str | None) -> str:
    return reason if reason in _FINISH else "stop"


def _usage(u: Usage) -> CompletionUsage:
    return CompletionUsage(prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens,
                           total_tokens=u.total_tokens)


def _chat_logprobs(tokens: list[TokenLogprob] | None) -> dict[str, Any] | None:
    if tokens is None:
        return None
    return {
        "content": [
            {"token": t.token, "logprob": t.logprob, "bytes": list(t.token.encode()),
             "top_logprobs": [{"token": a, "logprob": lp, "bytes": list(a.encode())} for a, lp in t.top]}
            for t in tokens
        ]
    }


def _completion_logprobs(tokens: list[TokenLogprob] | None) -> dict[str, Any] | None:
    if tokens is None:
        return None
    return {
        "tokens": [t.token for t in tokens],
        "token_logprobs": [t.logprob for t in tokens],
        "top_logprobs": [dict(t.top) for t in tokens],
    }


def finite(value: Any) -> Any:
    """`value` with every non-finite float (a -inf log-probability, a NaN score) as None: JSON has no such numbers,
    and a strict encoder would fail the whole response on one (a 500 for a well-formed request)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def to_json(payload: Any) -> str:
    """The service's JSON: compact, UTF-8, non-finite floats as null (`finite`)."""
    return json.dumps(finite(payload), separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def sse(payload: dict[str, Any] | str) -> str:
    """One server-sent event."""
    data = payload if isinstance(payload, str) else to_json(payload)
    return f"data: {data}\n\n"


class OpenAIService:
    """Chat and text completions, model listing and health, over a `Pipeline` and its two engines."""

    def __init__(self, pipeline: Pipeline, api: ApiConfig, scout: LLMEngine, validator: LLMEngine,
                 tenancy: Tenancy | None = None) -> None:
        self.pipeline = pipeline
        self.api = api
        self.scout = scout
        self.validator = validator
        # Who may call and with what (an open service without one).
        self.tenancy = tenancy or Tenancy(AuthConfig())

    # -- callers --------------------------------------------------------------------------

    async def admit(self, api_key: str | None, priority_header: str | None) -> tuple[Caller, Priority]:
        """Who is calling (a 401 for a missing or unknown key), its priority class, and one request counted
        against its tenant's limits (a 429 once one is spent): all before the body is read."""
        caller = self.tenancy.authenticate(api_key)
        priority = self.tenancy.priority(caller, priority_header)
        await self.tenancy.admit(caller)
        return caller, priority

    def _strategy(self, req: ChatCompletionRequest | CompletionRequest, caller: Caller | None) -> StrategySpec | None:
        """The request's strategy, its candidates within `api.max_choices` and its budget within its tenant's."""
        if req.n > self.api.max_choices:
            raise InvalidRequestError(f"n is {req.n}, above this service's limit of {self.api.max_choices}",
                                      param="n")
        spec = req.strategy
        if spec is None:
            return None
        if spec.n > self.api.max_choices:
            raise InvalidRequestError(f"strategy.n is {spec.n}, above this service's limit of "
                                      f"{self.api.max_choices}", param="strategy.n")
        tenant = self.tenancy.config.tenants.get(caller.tenant) if caller is not None and caller.tenant else None
        cap = tenant.strategy_budget_s if tenant is not None else None
        if cap is not None and (spec.budget is None or spec.budget > cap):
            spec = spec.model_copy(update={"budget": cap})
        return spec

    def _cache(self, control: CacheControl | None, caller: Caller | None) -> CacheControl | None:
        """The request's cache control in the namespace the server gives its caller."""
        if caller is None:
            return control
        control = control or CacheControl()
        namespace = self.tenancy.namespace(caller, control.namespace)
        return control if namespace == control.namespace else control.model_copy(update={"namespace": namespace})

    # -- models ---------------------------------------------------------------------------

    def tier_models(self) -> dict[str, str]:
        """The engine model behind each tier."""
        return {"scout": self.scout.model_id, "validator": self.validator.model_id}

    def list_models(self) -> dict[str, Any]:
        """`GET /v1/models`: the routing names and the engines' own names."""
        created = int(time.time())
        tiers = self.tier_models()
        data = [{"id": self.api.model_name, "object": "model", "created": created, "owned_by": "inference-optimizer"}]
        data += [{"id": tier, "object": "model", "created": created, "owned_by": "inference-optimizer",
                  "root": model} for tier, model in tiers.items()]
        data += [{"id": model, "object": "model", "created": created, "owned_by": "inference-optimizer",
                  "parent": tier} for tier, model in tiers.items() if model not in ROUTING_MODELS]
        return {"object": "list", "data": data}

    def _route_model(self, model: str) -> str:
        if model in (self.api.model_name, "auto"):
            return "auto"
        if model in ("scout", "validator"):
            return model
        for tier, engine_model in self.tier_models().items():
            if model == engine_model:
                return tier
        known = ", ".join([self.api.model_name, "scout", "validator", *self.tier_models().values()])
        raise ModelNotFoundError(f"The model '{model}' does not exist. Available: {known}", param="model")

    # -- requests -------------------------------------------------------------------------

    def _max_tokens(self, requested: int | None) -> int:
        if requested is None:
            return self.api.default_max_tokens
        if requested > self.api.max_tokens_limit:
            raise InvalidRequestError(
                f"max_tokens is {requested}, above this service's limit of {self.api.max_tokens_limit}",
                param="max_tokens",
            )
        return requested

    def _common(self, req: ChatCompletionRequest | CompletionRequest) -> dict[str, Any]:
        stop = req.stop_list()
        if len(stop) > self.api.max_stop_sequences:
            raise InvalidRequestError(f"at most {self.api.max_stop_sequences} stop sequences are allowed",
                                      param="stop")
        return dict(
            n=req.n,
            max_tokens=self._max_tokens(req.requested_max_tokens()),
            temperature=req.temperature,
            top_p=req.top_p,
            seed=req.seed,
            stop=stop,
            presence_penalty=req.presence_penalty,
            frequency_penalty=req.frequency_penalty,
        )

    def _bounded(self, chars: int, param: str) -> None:
        if chars > self.api.max_prompt_chars:
            raise InvalidRequestError(f"the prompt is {chars} characters, above this service's limit of "
                                      f"{self.api.max_prompt_chars}", param=param, code="context_length_exceeded")

    def chat_request(self, req: ChatCompletionRequest) -> GenerationRequest:
        """The engine request for a chat completion."""
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                    for m in req.messages]
        self._bounded(sum(len(m["content"]) for m in messages), "messages")
        return GenerationRequest(messages=messages, logprobs=req.logprobs, top_logprobs=req.top_logprobs or 0,
                                 **self._common(req))

    def completion_request(self, req: CompletionRequest) -> GenerationRequest:
        """The engine request for a text completion."""
        self._bounded(len(req.prompt_text()), "prompt")
        return GenerationRequest(prompt=req.prompt_text(), logprobs=req.logprobs is not None,
                                 top_logprobs=req.logprobs or 0, **self._common(req))

    # -- non-streamed ---------------------------------------------------------------------

    async def chat(self, req: ChatCompletionRequest, priority: Priority | None = None, caller: Caller | None = None
                   ) -> tuple[dict[str, Any], RouteTrace]:
        """A whole chat completion and its route."""
        tier = self._route_model(req.model)
        routed = await self._within_deadline(self.pipeline.complete(
            self.chat_request(req), tier, req.confidence_threshold, self._cache(req.cache, caller), priority,
            _tenant(caller), self._strategy(req, caller)))
        gen = routed.generation
        body = ChatCompletion(
            id=new_id("chatcmpl"), object="chat.completion", created=int(time.time()), model=gen.model,
            choices=[{"index": i, "message": {"role": "assistant", "content": g.text},
                      "finish_reason": _finish_reason(g.finish_reason), "logprobs": _chat_logprobs(g.tokens)}
                     for i, g in enumerate(gen.choices)],
            usage=_usage(gen.usage),
        ).model_dump(exclude_none=True)
        return self._with_route(body, routed)

    async def completion(self, req: CompletionRequest, priority: Priority | None = None, caller: Caller | None = None
                         ) -> tuple[dict[str, Any], RouteTrace]:
        """A whole text completion and its route."""
        tier = self._route_model(req.model)
        routed = await self._within_deadline(self.pipeline.complete(
            self.completion_request(req), tier, req.confidence_threshold, self._cache(req.cache, caller), priority,
            _tenant(caller), self._strategy(req, caller)))
        gen = routed.generation
        body = Completion(
            id=new_id("cmpl"), object="text_completion", created=int(time.time()), model=gen.model,
            choices=[CompletionChoice(index=i, text=g.text, finish_reason=_finish_reason(g.finish_reason),
                                      logprobs=_completion_logprobs(g.tokens)) for i, g in enumerate(gen.choices)],
            usage=_usage(gen.usage),
        ).model_dump(exclude_none=True)
        return self._with_route(body, routed)

    @staticmethod
    def _with_route(body: dict[str, Any], routed: Routed) -> tuple[dict[str, Any], RouteTrace]:
        body["route"] = routed.trace.model_dump()
        return body, routed.trace

    # -- streamed -------------------------------------------------------------------------

    async def chat_stream(self, req: ChatCompletionRequest, priority: Priority | None = None,
                          caller: Caller | None = None) -> tuple[AsyncIterator[str], RouteTrace]:
        """SSE events of a streamed chat completion; the route is decided before the first one."""
        tier = self._route_model(req.model)
        deadline = self._deadline()
        stream = await self._within_deadline(self.pipeline.open_stream(
            self.chat_request(req), tier, req.confidence_threshold, self._cache(req.cache, caller), priority,
            _tenant(caller), self._strategy(req, caller)), deadline)
        cid, created = new_id("chatcmpl"), int(time.time())

        def event(chunk: GenerationChunk | None, first: bool = False) -> dict[str, Any]:
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else {}
            if chunk is not None and chunk.text:
                delta["content"] = chunk.text
            choice = {"index": chunk.index if chunk else 0, "delta": delta,
                      "finish_reason": _finish_reason(chunk.finish_reason) if chunk and chunk.finish_reason else None,
                      "logprobs": _chat_logprobs(chunk.tokens) if chunk else None}
            return ChatCompletionChunk(id=cid, object="chat.completion.chunk", created=created, model=stream.model,
                                       choices=[choice]).model_dump(exclude_none=True)

        return (self._sse(stream, event, req.include_usage(), cid, created, "chat.completion.chunk", deadline),
                stream.trace)

    async def completion_stream(self, req: CompletionRequest, priority: Priority | None = None,
                                caller: Caller | None = None) -> tuple[AsyncIterator[str], RouteTrace]:
        """SSE events of a streamed text completion."""
        tier = self._route_model(req.model)
        deadline = self._deadline()
        stream = await self._within_deadline(self.pipeline.open_stream(
            self.completion_request(req), tier, req.confidence_threshold, self._cache(req.cache, caller), priority,
            _tenant(caller), self._strategy(req, caller)), deadline)
        cid, created = new_id("cmpl"), int(time.time())

        def event(chunk: GenerationChunk | None, first: bool = False) -> dict[str, Any]:
            choice = CompletionChoice(
                index=chunk.index if chunk else 0, text=chunk.text if chunk else "",
                finish_reason=_finish_reason(chunk.finish_reason) if chunk and chunk.finish_reason else "stop",
                logprobs=_completion_logprobs(chunk.tokens) if chunk else None,
            ).model_dump(exclude_none=True)
            if not (chunk and chunk.finish_reason):
                choice["finish_reason"] = None  # the SDK's type insists on a value; the wire format does not
            return {"id": cid, "object": "text_completion", "created": created, "model": stream.model,
                    "choices": [choice]}

        return self._sse(stream, event, req.include_usage(), cid, created, "text_completion", deadline), stream.trace

    async def _sse(self, stream: RoutedStream, event, include_usage: bool, cid: str, created: int, obj: str,
                   deadline: float | None = None) -> AsyncIterator[str]:
        usage: Usage | None = None
        started: set[int] = set()  # choices whose first event (with the role) has gone
        finals: list[dict[str, Any]] = []
        try:
            async with contextlib.aclosing(stream.chunks) as chunks:  # a client that leaves stops the work now
                async for chunk in _until(chunks, deadline, self.api.request_timeout_s):
                    if chunk.usage is not None:
                        usage = chunk.usage
                    first = chunk.index not in started
                    if not chunk.text and not chunk.finish_reason and not first:
                        continue
                    payload = event(chunk, first)
                    started.add(chunk.index)
                    if chunk.finish_reason:
                        # Held back until the stream ends, so that the last can carry the complete route trace.
                        finals.append(payload)
                        continue
                    yield sse(payload)
            if not finals:
                finals = [event(GenerationChunk(finish_reason="stop"), 0 not in started)]
            route = stream.trace.model_dump()  # complete now that the stream has ended
            finals[-1]["route"] = route
            for final in finals:
                yield sse(final)
            if include_usage:
                yield sse({"id": cid, "object": obj, "created": created, "model": stream.model, "choices": [],
                           "usage": _usage(usage or Usage()).model_dump(), "route": route})
        except InferenceOptimizerError as exc:
            # Headers are gone: the error travels as an event, the way OpenAI and vLLM send it.
            _, body = to_openai_error(exc)
            yield sse(body)
        yield sse("[DONE]")

    # -- the end-to-end deadline ---------------------------------------------------------------

    def _deadline(self) -> float | None:
        """When this request's time is up (`api.request_timeout_s` from now), on the event loop's clock."""
        timeout = self.api.request_timeout_s
        return None if timeout is None else asyncio.get_running_loop().time() + timeout

    async def _within_deadline(self, work: Awaitable[T], deadline: float | None = None) -> T:
        """`work` cancelled at the deadline (and with it the engines' calls): a 504."""
        deadline = deadline if deadline is not None else self._deadline()
        if deadline is None:
            return await work
        try:
            async with asyncio.timeout_at(deadline) as scope:
                return await work
        except TimeoutError:
            if not scope.expired():
                raise  # a timeout of the work's own, already mapped where it happened
            raise EngineTimeoutError(f"the request took longer than {self.api.request_timeout_s:g} s "
                                     "(api.request_timeout_s)") from None

    async def check_health(self) -> dict[str, Any]:
        """Ask both engines; raise `EngineUnavailableError` if one cannot serve."""
        await self.scout.check_health()
        await self.validator.check_health()
        return {"status": "ok", **self.tier_models()}
