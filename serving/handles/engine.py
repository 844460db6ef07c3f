"""`LLMEngine` over a `ray.serve.llm` LLMServer deployment (vLLM inside).

The LLMServer speaks vLLM's OpenAI protocol objects: a non-streamed call yields one
response (or an `ErrorResponse`), a streamed call yields lists of SSE strings. This
module turns both into `Generation` / `GenerationChunk` and engine errors into the
exceptions of `serving.errors`. Ray and vLLM are imported when an engine is built,
never at import time.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

from serving.engines.base import (
    Generation,
    GenerationChunk,
    GenerationRequest,
    LLMEngine,
    Scored,
    TokenLogprob,
    Usage,
)
from serving.errors import (
    ContextLengthExceededError,
    EngineUnavailableError,
    InferenceOptimizerError,
    InvalidRequestError,
    OverloadedError,
)
from serving.verify import DraftOutcome, Verified, accept_length

logger = logging.getLogger(__name__)
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


def is_client_error(exc: BaseException) -> bool:
    """Whether vLLM refused a request as the caller's fault (`VLLMClientError`: an empty prompt, a bad value), also
    when raised in the replica (Ray's error then derives from it); by name, so this module need not import vLLM."""
    return isinstance(exc, ValueError) or any(c.__name__ == "VLLMClientError" for c in type(exc).__mro__)


def error_from_call(model_id: str, exc: BaseException) -> InferenceOptimizerError:
    """What a failed call to an engine deployment means: its queue full (Ray's `BackPressureError`: come back
    later), the request refused by vLLM (a 400), or the engine down or crashed (a 503)."""
    names = {c.__name__ for c in type(exc).__mro__}
    if "BackPressureError" in names:
        return OverloadedError(f"{model_id} is at its queue limit (max_queued_requests)", retry_after_s=1.0)
    if "VLLMClientError" in names:
        return InvalidRequestError(f"{model_id}: {exc}"[:500])
    return EngineUnavailableError(f"{model_id}: {type(exc).__name__}: {exc}"[:500])


# Ray's errors for a replica that died (killed, out of memory, its node lost) or is unreachable.
_REPLICA_GONE = frozenset({"ActorDiedError", "RayActorError", "ActorUnavailableError"})


def replica_gone(exc: BaseException) -> bool:
    """Whether a handle call failed because its replica died or became unreachable (by name: no Ray import)."""
    return any(c.__name__ in _REPLICA_GONE for c in type(exc).__mro__)


async def until_abandoned(response: Any) -> AsyncIterator[Any]:
    """The items of a handle call's response stream. A reader that leaves before the end (an escalation, an early
    stop, a timeout, a client gone) cancels the call: Ray Serve cancels the replica's task, and vLLM aborts the
    request when its generator is cancelled (AsyncLLM.generate), so no engine keeps generating for nobody."""
    finished = False
    try:
        async for item in response:
            yield item
        finished = True
    finally:
        if not finished:
            response.cancel()


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

    def __init__(self, handle: Any, model_id: str, tokenizer: str | None = None,
                 priority_scheduling: bool = False, replica_death_retries: int = 1) -> None:
        self._handle = handle
        # A call whose replica died before it answered anything is sent again this many times.
        self.replica_death_retries = replica_death_retries
        self.model_id = model_id
        # Where the model's tokenizer is (its folder or hub ID): needed by `verify` only.
        self._tokenizer_source = tokenizer
        self._tokenizer: Any = None
        self._tokenizer_lock: asyncio.Lock | None = None  # made on first use: the engine is pickled by `.bind()`
        self.can_verify = tokenizer is not None
        # vLLM rejects a non-zero priority unless the engine schedules by priority.
        self._priority = priority_scheduling

    @property
    def _oai(self) -> Any:
        """vLLM's OpenAI protocol classes, as `ray.serve.llm` exports them (imported on first use, not at build)."""
        from ray.serve.llm import openai_api_models

        return openai_api_models

    def __getstate__(self) -> dict[str, Any]:
        # `.bind()` pickles the engine into the Ingress's arguments: send the recipe, not a loaded tokenizer.
        return {**self.__dict__, "_tokenizer": None, "_tokenizer_lock": None}

    # -- verified escalation ----------------------------------------------------------------

    def _tok(self) -> Any:
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self._tokenizer_source)
            eos = {self._tokenizer.eos_token_id}
            try:
                from transformers import GenerationConfig

                gen_eos = GenerationConfig.from_pretrained(self._tokenizer_source).eos_token_id
                eos |= set(gen_eos if isinstance(gen_eos, list) else [gen_eos])
            except OSError:
                pass
            self._eos = {e for e in eos if e is not None}
        return self._tokenizer

    async def _loaded_tokenizer(self) -> Any:
        """The tokenizer, loaded once in a worker thread: reading it from disk takes a while and
        must not stall the ingress's event loop (every other request in flight waits on it)."""
        if self._tokenizer is None:
            self._tokenizer_lock = self._tokenizer_lock or asyncio.Lock()
            async with self._tokenizer_lock:
                if self._tokenizer is None:
                    await asyncio.to_thread(self._tok)
        return self._tokenizer

    def _prompt_ids(self, req: GenerationRequest) -> list[int]:
        tok = self._tok()
        if req.kind == "chat":
            out = tok.apply_chat_template(req.messages, add_generation_prompt=True, tokenize=True)
            ids = out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out
            return list(ids)
        return list(tok(req.prompt or "").input_ids)

    def _ids_request(self, ids: list[int] | list[list[int]], max_tokens: int, stream: bool, priority: int = 0,
                     **extra: Any) -> Any:
        if self._priority and priority:
            extra["priority"] = priority
        if stream:
            extra["stream_options"] = {"include_usage": True}
        return self._oai.CompletionRequest(model=self.model_id, prompt=ids, max_tokens=max_tokens, temperature=0.0,
                                           return_token_ids=True, stream=stream, **extra)

    async def _complete_ids(self, ids: list[int] | list[list[int]], max_tokens: int, priority: int = 0,
                            **extra: Any) -> dict[str, Any]:
        """Greedy continuation of token ids (or of several prompts' ids in one request: vLLM batches them), whole."""
        vreq = self._ids_request(ids, max_tokens, False, priority, **extra)
        try:
            async for item in until_abandoned(self._handle.completions.options(stream=True).remote(vreq)):
                if _is_error(item):
                    raise error_from_engine(item)
                return item.model_dump() if hasattr(item, "model_dump") else item
        except InferenceOptimizerError:
            raise
        except Exception as exc:
            raise error_from_call(self.model_id, exc) from exc
        raise EngineUnavailableError(f"{self.model_id}: the engine returned no response")

    async def _stream_ids(self, ids: list[int], max_tokens: int, priority: int = 0) -> AsyncIterator[dict[str, Any]]:
        """Greedy continuation of token ids, streamed: the engine's SSE payloads (token ids included)."""
        vreq = self._ids_request(ids, max_tokens, True, priority)
        try:
            async for batch in until_abandoned(self._handle.completions.options(stream=True).remote(vreq)):
                for item in batch if isinstance(batch, list) else [batch]:
                    if _is_error(item):
                        raise error_from_engine(item)
                    for data in _sse_payloads(item):
                        if "error" in data:
                            raise error_from_engine(data)
                        yield data
        except InferenceOptimizerError:
            raise
        except Exception as exc:
            raise error_from_call(self.model_id, exc) from exc

    async def _score(self, request: GenerationRequest, draft: str) -> _Scored:
        """One prefill over prompt + draft: how much of the draft the Validator accepts, and its next token."""
        tok = await self._loaded_tokenizer()
        prompt = self._prompt_ids(request)
        proposed = list(tok(draft, add_special_tokens=False).input_ids)[: request.max_tokens]
        # The Validator's own choice at every draft position, and (max_tokens=1) its next
        # token after the whole draft.
        scored = (await self._complete_ids(prompt + proposed, 1, priority=request.priority,
                                           prompt_logprobs=1))["choices"][0]
        positions = scored.get("prompt_logprobs") or []
        choices = [_top1(positions[len(prompt) + j]) if len(prompt) + j < len(positions) else None
                   for j in range(len(proposed))]
        k = accept_length(proposed, choices)
        if k < len(proposed):
            nxt: int | None = choices[k]
        else:
            after = scored.get("token_ids") or []
            nxt = after[0] if after else None
        s = _Scored(prompt=prompt, proposed=len(proposed), accepted=k, ids=proposed[:k], counted=k)
        if k >= request.max_tokens:
            s.finish = "length"  # the whole draft, as long as the answer may be: nothing to add
        elif nxt is not None and nxt in self._eos:
            s.counted += 1  # the answer ends here; the engine counts its end-of-sequence token
            s.finish = "stop"
        elif nxt is not None:
            s.ids.append(nxt)
            s.counted += 1
            if len(s.ids) >= request.max_tokens:
                s.finish = "length"
        # nxt is None (no top-1 reported): greedy generation simply continues from the accepted prefix.
        s.saved = s.counted
        return s

    async def verify(self, request: GenerationRequest, draft: str) -> Verified:
        s = await self._score(request, draft)
        finish = s.finish
        if finish is None:
            rest = await self._complete_ids(s.prompt + s.ids, request.max_tokens - len(s.ids),
                                            priority=request.priority)
            choice = rest["choices"][0]
            new = choice.get("token_ids") or []
            s.ids += [t for t in new if t not in self._eos]
            s.counted += (rest.get("usage") or {}).get("completion_tokens") or len(new)
            finish = choice.get("finish_reason") or "stop"
        text = self._tok().decode(s.ids, skip_special_tokens=True)
        gen = Generation(text=text, finish_reason=finish, usage=Usage(len(s.prompt), s.counted), model=self.model_id)
        return Verified(gen, proposed=s.proposed, accepted=s.accepted, generated=s.counted - s.accepted,
                        saved=s.saved)

    async def verify_stream(self, request: GenerationRequest, draft: str) -> AsyncIterator[GenerationChunk]:
        s = await self._score(request, draft)
        text = _IncrementalText(self._tok())
        yield GenerationChunk(text=text.push(s.ids), draft=DraftOutcome(s.proposed, s.accepted, s.saved))
        finish = s.finish
        if finish is None:
            async for data in self._stream_ids(s.prompt + s.ids, request.max_tokens - len(s.ids), request.priority):
                u = data.get("usage")
                if u:
                    s.counted = s.saved + (u.get("completion_tokens") or 0)
                for choice in data.get("choices") or []:
                    piece = text.push([t for t in choice.get("token_ids") or [] if t not in self._eos])
                    if piece:
                        yield GenerationChunk(text=piece)
                    finish = choice.get("finish_reason") or finish
        tail = text.flush()
        if tail:
            yield GenerationChunk(text=tail)
        yield GenerationChunk(finish_reason=finish or "stop", usage=Usage(len(s.prompt), s.counted))

    async def score(self, request: GenerationRequest, continuations: list[str]) -> list[Scored]:
        """One prefill over prompt + each continuation (one engine request: vLLM batches the prompts), reading
        the log-probability vLLM reports for every continuation token (`prompt_logprobs`)."""
        if not continuations:
            return []
        tok = await self._loaded_tokenizer()
        prompt = self._prompt_ids(request)
        conts = [list(tok(c, add_special_tokens=False).input_ids) for c in continuations]
        response = await self._complete_ids([prompt + c for c in conts], 1, priority=request.priority,
                                            prompt_logprobs=0)
        choices = sorted(response["choices"], key=lambda c: c.get("index", 0))
        out = []
        for text, ids, choice in zip(continuations, conts, choices, strict=True):
            positions = choice.get("prompt_logprobs") or []
            lps = [_logprob_of(positions[len(prompt) + j], t) if len(prompt) + j < len(positions) else None
                   for j, t in enumerate(ids)]
            out.append(Scored(text=text, logprobs=[lp for lp in lps if lp is not None], prompt_tokens=len(prompt)))
        return out

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
        if _sampled_choices(req) > 1:
            common["n"] = req.n
        if req.request_id:
            common["request_id"] = req.request_id
        if self._priority and req.priority:
            common["priority"] = req.priority
        if stream:
            common["stream_options"] = {"include_usage": True}
        if req.kind == "chat":
            if req.logprobs:
                common.update(logprobs=True, top_logprobs=req.top_logprobs)
            if req.prefix:  # the answer so far is the assistant's last message, continued
                return self._oai.ChatCompletionRequest(
                    messages=[*req.messages, {"role": "assistant", "content": req.prefix}],
                    continue_final_message=True, add_generation_prompt=False, **common)
            return self._oai.ChatCompletionRequest(messages=req.messages, **common)
        if req.logprobs:
            common["logprobs"] = req.top_logprobs
        return self._oai.CompletionRequest(prompt=(req.prompt or "") + req.prefix, **common)

    def _method(self, req: GenerationRequest) -> Any:
        method = self._handle.chat if req.kind == "chat" else self._handle.completions
        return method.options(stream=True)

    async def _responses(self, req: GenerationRequest, stream: bool) -> AsyncIterator[Any]:
        try:
            vreq = self._to_vllm(req, stream)
        except Exception as exc:  # vLLM's own validation (pydantic, VLLMValidationError) of the request
            if is_client_error(exc):
                raise InvalidRequestError(str(exc)[:500]) from None
            raise
        for attempt in range(1 + self.replica_death_retries):
            started = False
            try:
                async for item in until_abandoned(self._method(req).remote(vreq)):
                    started = True
                    yield item
                return
            except InferenceOptimizerError:
                raise
            except Exception as exc:  # a dead replica, a Ray error, an engine crash, a full queue; or vLLM refusing it
                # A replica that died before answering anything (killed, out of memory, its node lost): the same
                # call again goes to another replica (Ray's router has dropped the dead one), or waits for the one
                # Serve starts, within the request's deadline. Once output has left, a retry would repeat it.
                if not started and attempt < self.replica_death_retries and replica_gone(exc):
                    logger.warning("%s: the replica died before answering (%s); retrying on another",
                                   self.model_id, type(exc).__name__)
                    continue
                raise error_from_call(self.model_id, exc) from exc

    async def generate(self, request: GenerationRequest) -> Generation:
        async for item in self._responses(request, stream=False):
            if _is_error(item):
                raise error_from_engine(item)
            data = item.model_dump() if hasattr(item, "model_dump") else item
            gens = []
            for choice in sorted(data["choices"], key=lambda c: c.get("index", 0)):
                if request.kind == "chat":
                    text = choice["message"].get("content") or ""
                    tokens = _logprobs_from_chat(choice.get("logprobs"))
                else:
                    text = choice.get("text") or ""
                    tokens = _logprobs_from_completion(choice.get("logprobs"))
                gens.append(Generation(text=text, finish_reason=choice.get("finish_reason"),
                                       tokens=tokens if request.logprobs else None, model=self.model_id,
                                       stop_reason=choice.get("stop_reason")))
            usage = _usage(data.get("usage")) or Usage()  # all choices' tokens
            if len(gens) < request.n:  # greedy: one answer, which every choice is
                gens = [gens[0], *(replace(gens[0]) for _ in range(request.n - 1))]
                usage = Usage(usage.prompt_tokens, usage.completion_tokens * request.n)
            gens[0].usage, gens[0].alternatives = usage, gens[1:]
            return gens[0]
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
                    for chunk in self._chunks(data, request):
                        copies = request.n // _sampled_choices(request)
                        if copies == 1:
                            yield chunk
                            continue
                        # Greedy with n > 1: vLLM generates the one answer once; every choice is that answer.
                        for i in range(copies):
                            last = i == copies - 1 and chunk.usage is not None
                            yield replace(chunk, index=i, usage=Usage(chunk.usage.prompt_tokens,
                                                                       chunk.usage.completion_tokens * copies)
                                          if last else None)

    def _chunks(self, data: dict[str, Any], request: GenerationRequest) -> list[GenerationChunk]:
        """The chunks of one SSE payload: one per choice it carries (usage on the last)."""
        usage = _usage(data.get("usage"))
        if not data.get("choices"):
            return [GenerationChunk(usage=usage)] if usage else []
        out = []
        for choice in data["choices"]:
            if request.kind == "chat":
                text = (choice.get("delta") or {}).get("content") or ""
                tokens = _logprobs_from_chat(choice.get("logprobs"))
            else:
                text = choice.get("text") or ""
                tokens = _logprobs_from_completion(choice.get("logprobs"))
            out.append(GenerationChunk(text=text, finish_reason=choice.get("finish_reason"),
                                       tokens=tokens if request.logprobs else None, index=choice.get("index") or 0))
        out[-1].usage = usage
        return out

    async def check_health(self) -> None:
        try:
            await self._handle.check_health.remote()
        except Exception as exc:
            raise EngineUnavailableError(f"{self.model_id} is not healthy: {type(exc).__name__}") from exc


@dataclass
class _Scored:
    """A draft after the scoring pass (see `ServeLLMEngine._score`)."""

    prompt: list[int]
    proposed: int
    accepted: int
    ids: list[int]  # the answer so far: the accepted prefix, then the Validator's next token
    counted: int  # completion tokens as the engine counts them (an end-of-sequence token counts)
    finish: str | None = None  # set when the answer is already complete
    saved: int = 0  # tokens obtained without a decode step


class _IncrementalText:
    """Text of a growing list of token ids, handed out piece by piece.

    Decoding the whole list each time (not each token alone) keeps multi-byte characters
    and the tokenizer's spacing right; a piece that ends inside a character waits for the
    next token. The pieces join to `decode(all ids)`, the non-streamed text.
    """

    def __init__(self, tokenizer: Any) -> None:
        self._tok = tokenizer
        self._ids: list[int] = []
        self._sent = ""

    def push(self, ids: list[int]) -> str:
        self._ids += ids
        text = self._tok.decode(self._ids, skip_special_tokens=True)
        if text.endswith("\ufffd") or not text.startswith(self._sent):
            return ""
        piece, self._sent = text[len(self._sent):], text
        return piece

    def flush(self) -> str:
        text = self._tok.decode(self._ids, skip_special_tokens=True)
        piece = text[len(self._sent):] if text.startswith(self._sent) else ""
        self._sent = text
        return piece


def _top1(position: dict[Any, Any] | None) -> int | None:
    """The token ranked first at one prompt position (vLLM's prompt logprobs: {token_id: Logprob})."""
    if not position:
        return None
    for token_id, lp in position.items():
        rank = lp.get("rank") if isinstance(lp, dict) else getattr(lp, "rank", None)
        if rank == 1:
            return int(token_id)
    return None


def _sampled_choices(request: GenerationRequest) -> int:
    """How many choices the engine is asked for: vLLM refuses n > 1 without sampling (all would be the same), so a
    greedy request's choices are one answer repeated."""
    return request.n if request.temperature > 0 else 1


def _logprob_of(position: dict[Any, Any] | None, token_id: int) -> float | None:
    """The log-probability of `token_id` at one prompt position (keys are ids, as ints or JSON strings)."""
    if not position:
        return None
    lp = position.get(token_id, position.get(str(token_id)))
    if lp is None:
        return None
    value = lp.get("logprob") if isinstance(lp, dict) else getattr(lp, "logprob", None)
    return None if value is None else float(value)


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
