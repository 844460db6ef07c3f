"""Verified escalation: acceptance logic, and `ServeLLMEngine.verify` against a scripted engine.

The scripted engine plays vLLM's side of the protocol (prompt logprobs with ranks, token
ids, usage) for a Validator whose greedy answer to any prompt is a fixed token sequence;
the tokenizer is the real Qwen2.5 one (prepared by `make test`), so re-tokenising drafts is
real.
"""

from __future__ import annotations

import asyncio
import json
import math

import pytest

from serving.config import TieringConfig
from serving.config.app import default_cache_dir
from serving.engines.base import GenerationRequest
from serving.pipeline import build_pipeline
from serving.verify import Verified, accept_length, can_verify
from tests.unit.fakes import FakeEngine

QWEN = default_cache_dir() / "models" / "qwen2.5-coder-0.5b-instruct"
SMOL = default_cache_dir() / "models" / "smollm2-135m-instruct"
ANSWER = "The capital of France is Paris. It is on the Seine."
EOS = 151645


def test_accept_length():
    assert accept_length([1, 2, 3], [1, 2, 3]) == 3
    assert accept_length([1, 2, 3], [1, 9, 3]) == 1
    assert accept_length([1, 2, 3], [7, 2, 3]) == 0
    assert accept_length([], [1]) == 0
    assert accept_length([1, 2], [1]) == 1  # no choice known past the scored positions


def test_only_plain_greedy_requests_are_verified():
    base = dict(messages=[{"role": "user", "content": "hi"}], temperature=0)
    assert can_verify(GenerationRequest(**base)) is None
    assert can_verify(GenerationRequest(**{**base, "temperature": 0.7})) == "sampled"
    assert can_verify(GenerationRequest(**base, stop=["\n"])) == "stop_strings"
    assert can_verify(GenerationRequest(**base, logprobs=True)) == "logprobs"
    # A penalised greedy answer is not the plain greedy choice the scoring pass reads.
    assert can_verify(GenerationRequest(**base, presence_penalty=0.5)) == "penalties"
    assert can_verify(GenerationRequest(**base, frequency_penalty=-0.3)) == "penalties"


class ScriptedHandle:
    """A Validator LLMServer whose greedy answer to any prompt is `answer` then EOS."""

    def __init__(self, tokenizer, answer: str, prompt_len: int) -> None:
        self.answer = [*tokenizer(answer, add_special_tokens=False).input_ids, EOS]
        self.prompt_len = prompt_len
        self.calls: list[dict] = []
        self.completions = self

    def options(self, **_):
        return self

    def remote(self, vreq):
        return self._stream(vreq) if vreq.stream else self._respond(vreq)

    async def _stream(self, vreq):
        """vLLM's streamed completion: SSE strings, one token per event, then the usage event."""
        ids, n = list(vreq.prompt), vreq.max_tokens
        self.calls.append({"ids": ids, "max_tokens": n, "prompt_logprobs": vreq.prompt_logprobs, "stream": True})
        rest = self.answer[len(ids) - self.prompt_len:][:n]
        for i, t in enumerate(rest):
            finish = ("stop" if t == EOS else "length" if i == n - 1 else None) if i == len(rest) - 1 else None
            yield [f"data: {json.dumps({'choices': [{'text': '', 'token_ids': [t], 'finish_reason': finish}]})}\n\n"]
        usage = {"prompt_tokens": len(ids), "completion_tokens": len(rest)}
        yield [f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n", "data: [DONE]\n\n"]

    async def _respond(self, vreq):
        ids, n = list(vreq.prompt), vreq.max_tokens
        self.calls.append({"ids": ids, "max_tokens": n, "prompt_logprobs": vreq.prompt_logprobs})
        generated = ids[self.prompt_len:]
        plp = None
        if vreq.prompt_logprobs:
            plp = [None] * len(ids)
            for p in range(self.prompt_len, len(ids)):
                best = self.answer[p - self.prompt_len] if p - self.prompt_len < len(self.answer) else EOS
                plp[p] = {ids[p]: {"logprob": -0.1 if ids[p] == best else -3.0, "rank": 1 if ids[p] == best else 2}}
                plp[p][best] = {"logprob": -0.1, "rank": 1}
        # Greedy continuation: the answer goes on where `generated` leaves it (it agrees with it).
        rest = self.answer[len(generated):len(generated) + n]
        finish = "stop" if rest and rest[-1] == EOS else "length"
        yield {"choices": [{"text": "", "token_ids": rest, "finish_reason": finish, "prompt_logprobs": plp}],
               "usage": {"prompt_tokens": len(ids), "completion_tokens": len(rest)}}


@pytest.fixture(scope="module")
def tok():
    if not QWEN.exists():
        pytest.skip(f"{QWEN} not prepared: run `infopt models prepare --profile tiny`")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(QWEN)


def engine_and_handle(tok, max_tokens: int = 64):
    from serving.handles.engine import ServeLLMEngine

    request = GenerationRequest(messages=[{"role": "user", "content": "Capital of France?"}], temperature=0,
                                max_tokens=max_tokens)
    prompt = tok.apply_chat_template(request.messages, add_generation_prompt=True, tokenize=True)
    prompt_len = len(prompt["input_ids"] if hasattr(prompt, "keys") else prompt)
    handle = ScriptedHandle(tok, ANSWER, prompt_len)
    engine = ServeLLMEngine(handle, "qwen", tokenizer=str(QWEN))
    return engine, handle, request


def run(coro):
    return asyncio.run(coro)


@pytest.mark.parametrize(("draft", "accepted_words"), [
    ("A city called Paris.", 0),                                       # wrong from the first token
    ("The capital of France is Lyon, a big city.", 5),                 # wrong in the middle
    (ANSWER, None),                                                    # the whole draft accepted
    ("", 0),                                                           # an empty draft
])
def test_verify_always_returns_the_validators_own_answer(tok, draft, accepted_words):
    engine, handle, request = engine_and_handle(tok)
    out: Verified = run(engine.verify(request, draft))
    assert out.generation.text == ANSWER
    assert out.generation.finish_reason == "stop"
    answer_tokens = len(tok(ANSWER, add_special_tokens=False).input_ids)
    assert out.generation.usage.completion_tokens == answer_tokens + 1  # EOS counts, as vLLM counts it
    assert out.proposed == len(tok(draft, add_special_tokens=False).input_ids)
    if accepted_words is None:
        assert out.accepted == out.proposed == answer_tokens
        assert len(handle.calls) == 1  # the scoring pass already produced the final EOS: no second call
    else:
        prefix = " ".join(ANSWER.split()[:accepted_words])
        assert out.accepted == (len(tok(prefix, add_special_tokens=False).input_ids) if prefix else 0)
        assert len(handle.calls) == 2 and handle.calls[0]["prompt_logprobs"] == 1
        # The continuation starts after the accepted prefix and the Validator's correction.
        assert len(handle.calls[1]["ids"]) == handle.prompt_len + out.accepted + 1


def test_draft_longer_than_max_tokens_is_cut_and_the_answer_ends_at_max_tokens(tok):
    engine, handle, request = engine_and_handle(tok, max_tokens=4)
    out = run(engine.verify(request, ANSWER))
    assert out.proposed == 4 and out.accepted == 4 and len(handle.calls) == 1
    expected = tok.decode(tok(ANSWER, add_special_tokens=False).input_ids[:4])
    assert out.generation.text == expected and out.generation.finish_reason == "length"
    assert out.generation.usage.completion_tokens == 4


def test_a_draft_from_another_tokenizer_is_retokenised(tok):
    if not SMOL.exists():
        pytest.skip(f"{SMOL} not prepared")
    from transformers import AutoTokenizer

    smol = AutoTokenizer.from_pretrained(SMOL)
    smol_ids = smol(ANSWER, add_special_tokens=False).input_ids
    assert smol_ids != tok(ANSWER, add_special_tokens=False).input_ids  # really different vocabularies
    engine, _, request = engine_and_handle(tok)
    out = run(engine.verify(request, smol.decode(smol_ids)))
    assert out.generation.text == ANSWER and out.accepted == out.proposed


class VerifyingFake(FakeEngine):
    can_verify = True

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.drafts: list[str] = []

    async def verify(self, request, draft):
        self.drafts.append(draft)
        gen = await self.generate(request)
        return Verified(gen, proposed=len(draft), accepted=2, generated=gen.usage.completion_tokens - 2)


def test_router_verifies_the_draft_on_escalation_only_when_configured():
    unsure = [math.log(0.99)] * 3 + [math.log(0.05)]
    for enabled in (True, False):
        scout = FakeEngine("small", ["Par", "is", ".", ""], unsure)
        validator = VerifyingFake("large", ["Paris", " is", " the", " capital"])
        router = build_pipeline(scout, validator, TieringConfig(threshold=0.5, verified_escalation=enabled))
        out = run(router.complete(GenerationRequest(messages=[{"role": "user", "content": "q"}], temperature=0)))
        last = out.trace.stages[-1]
        assert out.generation.text == "Paris is the capital"
        if enabled:
            assert last.decision == "verified" and validator.drafts == ["Paris."]
            assert last.detail["accepted_tokens"] == 2 and last.detail["draft_tokens"] == 6
        else:
            assert last.decision == "answered" and validator.drafts == []
        # Sampled requests are never verified.
        out = run(router.complete(GenerationRequest(messages=[{"role": "user", "content": "q"}], temperature=0.5)))
        assert out.trace.stages[-1].decision in ("answered", "confident") or out.trace.tier == "scout"


async def _collect(agen):
    return [c async for c in agen]


@pytest.mark.parametrize(("draft", "accepted_words"), [
    ("A city called Paris.", 0),                                       # wrong from the first token
    ("The capital of France is Lyon, a big city.", 5),                 # wrong in the middle
    (ANSWER, None),                                                    # the whole draft accepted
    ("", 0),                                                           # an empty draft
])
def test_verify_stream_sends_the_accepted_prefix_first_then_streams_the_rest(tok, draft, accepted_words):
    engine, handle, request = engine_and_handle(tok)
    whole = run(engine.verify(request, draft))
    engine, handle, request = engine_and_handle(tok)
    chunks = run(_collect(engine.verify_stream(request, draft)))
    first, last = chunks[0], chunks[-1]
    # Order: the accepted prefix (and the Validator's correction) in one first chunk, carrying the outcome ...
    assert first.draft is not None and first.draft.accepted == whole.accepted
    assert first.draft.proposed == whole.proposed and first.draft.saved == whole.saved
    answer_ids = tok(ANSWER, add_special_tokens=False).input_ids
    head = answer_ids[:whole.accepted + (whole.accepted < len(answer_ids))]
    assert first.text == tok.decode(head)
    # ... then one chunk per further token, and a last chunk with the finish reason and usage.
    middle = chunks[1:-1]
    assert all(c.text and c.draft is None and c.finish_reason is None for c in middle)
    assert last.finish_reason == "stop" and last.usage.completion_tokens == whole.generation.usage.completion_tokens
    assert "".join(c.text for c in chunks) == whole.generation.text == ANSWER
    if accepted_words is None:
        assert len(middle) == 0 and len(handle.calls) == 1  # nothing left to generate
    else:
        assert handle.calls[-1]["stream"] and len(middle) == len(answer_ids) - len(head)


def test_verify_stream_of_a_draft_longer_than_max_tokens(tok):
    engine, handle, request = engine_and_handle(tok, max_tokens=4)
    chunks = run(_collect(engine.verify_stream(request, ANSWER + " And more words the answer never has.")))
    assert "".join(c.text for c in chunks) == tok.decode(tok(ANSWER, add_special_tokens=False).input_ids[:4])
    assert chunks[-1].finish_reason == "length" and chunks[-1].usage.completion_tokens == 4
    assert chunks[0].draft.proposed == 4 and len(handle.calls) == 1


def test_saved_tokens_count_the_correction_from_the_scoring_pass(tok):
    engine, _, request = engine_and_handle(tok)
    out = run(engine.verify(request, "The capital of France is Lyon, a big city."))
    # Five words accepted, plus the Validator's own token at the mismatch: no decode step for either.
    assert out.saved == out.accepted + 1 and out.generated == out.generation.usage.completion_tokens - out.accepted


def test_incremental_text_never_splits_a_character(tok):
    from serving.handles.engine import _IncrementalText

    text = "Café ☕ naïve 東京 🙂 done"
    ids = tok(text, add_special_tokens=False).input_ids
    inc = _IncrementalText(tok)
    pieces = [inc.push([i]) for i in ids] + [inc.flush()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
