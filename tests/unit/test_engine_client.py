"""The pure parts of the ray.serve.llm client: error mapping and SSE parsing."""

from types import SimpleNamespace

import pytest

from serving.errors import ContextLengthExceededError, EngineUnavailableError, InvalidRequestError
from serving.handles.engine import _is_error, _logprobs_from_chat, _sse_payloads, error_from_engine


def vllm_error(message: str, code: int):
    return SimpleNamespace(error=SimpleNamespace(message=message, type="BadRequestError", param="x", code=code))


def test_context_length_errors_are_recognised():
    err = error_from_engine(vllm_error("This model's maximum context length is 1024 tokens. However...", 400))
    assert isinstance(err, ContextLengthExceededError) and err.status_code == 400


def test_other_4xx_and_5xx():
    assert type(error_from_engine(vllm_error("bad stop", 400))) is InvalidRequestError
    # Exactly "unavailable" (503, retry later), not merely some subclass of it.
    assert type(error_from_engine(vllm_error("boom", 500))) is EngineUnavailableError
    assert type(error_from_engine({"error": {"message": "x", "code": 503}})) is EngineUnavailableError


def test_is_error():
    assert _is_error(vllm_error("x", 400))
    assert _is_error({"error": {}})
    assert not _is_error(SimpleNamespace(choices=[]))
    assert not _is_error({"choices": []})


def test_sse_payloads_drop_done_and_keep_order():
    item = 'data: {"a": 1}\n\ndata: {"a": 2}\n\ndata: [DONE]\n\n'
    assert _sse_payloads(item) == [{"a": 1}, {"a": 2}]


def test_chat_logprobs():
    toks = _logprobs_from_chat({"content": [{"token": "a", "logprob": -0.5, "top_logprobs": [
        {"token": "a", "logprob": -0.5}, {"token": "b", "logprob": -1.0}]}]})
    assert toks[0].token == "a" and toks[0].top == [("a", -0.5), ("b", -1.0)]
    assert _logprobs_from_chat(None) is None


def test_priority_reaches_vllm_only_when_the_engine_schedules_by_priority():
    pytest.importorskip("ray.serve.llm")
    from serving.engines.base import GenerationRequest
    from serving.handles.engine import ServeLLMEngine

    req = GenerationRequest(messages=[{"role": "user", "content": "hi"}], priority=10)
    assert ServeLLMEngine(None, "m", priority_scheduling=True)._to_vllm(req, False).priority == 10
    # vLLM refuses a non-zero priority from an fcfs engine: none is sent.
    assert ServeLLMEngine(None, "m", priority_scheduling=False)._to_vllm(req, False).priority == 0
    ids = ServeLLMEngine(None, "m", priority_scheduling=True)._ids_request([1, 2], 4, False, priority=10)
    assert ids.priority == 10


def test_the_verification_tokenizer_loads_once_off_the_event_loop():
    """Loading a tokenizer takes a while: other requests on the ingress's loop keep moving meanwhile."""
    import asyncio
    import threading
    import time

    pytest.importorskip("ray.serve.llm")
    from serving.handles.engine import ServeLLMEngine

    engine = ServeLLMEngine(None, "m", tokenizer="some/folder")
    loads: list[str] = []
    ticks = [0]  # the event loop's heartbeat
    loop_moved: list[bool] = []

    def slow_load():
        loads.append(threading.current_thread().name)
        # The load finishes only after the loop has ticked 3 more times, which it can only do if the
        # load is not blocking it (no timing assumed: a busy machine just makes it slower; the 30 s
        # are there so that a blocking load fails the test instead of hanging it).
        start, deadline = ticks[0], time.monotonic() + 30
        while ticks[0] < start + 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        loop_moved.append(ticks[0] >= start + 3)
        engine._tokenizer = "tokenizer"
        return engine._tokenizer

    engine._tok = slow_load

    async def main():
        async def ticker():
            while True:
                await asyncio.sleep(0.01)
                ticks[0] += 1

        task = asyncio.create_task(ticker())
        got = await asyncio.gather(engine._loaded_tokenizer(), engine._loaded_tokenizer())
        task.cancel()
        return got

    got = asyncio.run(main())
    assert got == ["tokenizer", "tokenizer"]
    assert len(loads) == 1 and loads[0] != threading.main_thread().name  # once, in a worker thread
    assert loop_moved == [True]  # the loop ran while the tokenizer loaded
