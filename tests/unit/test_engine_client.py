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


def test_vllms_client_errors_are_400s_wherever_they_are_raised():
    """An empty prompt: vLLM raises VLLMValidationError (not a ValueError) building the request or in the replica,
    where Ray's error derives from it; found by the fuzz (tests/reliability)."""
    from vllm.exceptions import VLLMValidationError

    from serving.handles.engine import is_client_error

    class RayTaskErrorLike(RuntimeError, VLLMValidationError):
        pass

    assert is_client_error(VLLMValidationError("The decoder prompt cannot be empty"))
    assert is_client_error(RayTaskErrorLike("wrapped")) and is_client_error(ValueError("pydantic"))
    assert not is_client_error(RuntimeError("engine died")) and not is_client_error(ConnectionError())


def test_a_full_engine_queue_is_overload_not_an_outage():
    from ray.serve.exceptions import BackPressureError

    from serving.errors import OverloadedError
    from serving.handles.engine import error_from_call

    err = error_from_call("scout-model", BackPressureError(num_queued_requests=5, max_queued_requests=5))
    assert isinstance(err, OverloadedError) and err.retry_after_s >= 1
    assert type(error_from_call("m", RuntimeError("actor died"))) is EngineUnavailableError


class _Response:
    """A handle call's response stream that records whether it was cancelled."""

    def __init__(self, n: int) -> None:
        self.items = list(range(n))
        self.cancelled = False

    @classmethod
    def of(cls, *items):
        r = cls(0)
        r.items = list(items)
        return r

    def __aiter__(self):
        return self._iter()

    async def _iter(self):
        for i in self.items:
            yield i

    def cancel(self) -> None:
        self.cancelled = True


def test_an_abandoned_engine_call_is_cancelled_and_a_finished_one_is_not():
    """Leaving a stream early (escalation, early stop, timeout, disconnect) cancels the replica's task, which makes
    vLLM abort the request; a stream read to its end is left alone."""
    import asyncio
    import contextlib

    from serving.handles.engine import until_abandoned

    async def run():
        whole = _Response(3)
        assert [i async for i in until_abandoned(whole)] == [0, 1, 2] and not whole.cancelled
        left = _Response(3)
        async with contextlib.aclosing(until_abandoned(left)) as items:
            async for _ in items:
                break
        assert left.cancelled
        slow = _Response(3)

        async def read_slowly():
            async for _ in until_abandoned(slow):
                await asyncio.sleep(10)

        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(read_slowly(), 0.05)
        assert slow.cancelled

    asyncio.run(run())


def test_a_call_whose_replica_died_before_answering_is_sent_again_once():
    """A replica killed under a request (OOM, node loss): the call goes again, to a replica Ray still has; a second
    death, or one after output has left, is a 503."""
    import asyncio

    from serving.engines.base import GenerationRequest
    from serving.handles.engine import ServeLLMEngine, replica_gone

    class ActorDiedError(RuntimeError):  # Ray's, by name
        pass

    class Dying:
        def __init__(self, after: int) -> None:
            self.after = after

        def cancel(self) -> None:
            pass

        def __aiter__(self):
            return self._iter()

        async def _iter(self):
            for i in range(self.after):
                yield {"choices": [{"message": {"content": f"x{i}"}, "finish_reason": "stop"}]}
            raise ActorDiedError("The actor died unexpectedly before finishing this task.")

    class Handle:
        def __init__(self, responses) -> None:
            self.responses, self.calls = list(responses), 0
            self.chat = self

        def options(self, **_):
            return self

        def remote(self, _):
            self.calls += 1
            r = self.responses.pop(0)
            return r if not isinstance(r, dict) else _Response.of(r)

    ok = {"choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}]}
    request = GenerationRequest(messages=[{"role": "user", "content": "hi"}], temperature=0)
    assert replica_gone(ActorDiedError()) and not replica_gone(RuntimeError())

    def engine(handle, retries=1):
        e = ServeLLMEngine(handle, "m", replica_death_retries=retries)
        e._to_vllm = lambda req, stream: req  # no vLLM request objects here
        return e

    handle = Handle([Dying(0), ok])
    assert asyncio.run(engine(handle).generate(request)).text == "hi" and handle.calls == 2
    for handle, retries in ((Handle([Dying(0), Dying(0)]), 1), (Handle([Dying(0)]), 0)):
        with pytest.raises(EngineUnavailableError):
            asyncio.run(engine(handle, retries).generate(request))
        assert handle.calls == retries + 1

    async def read(stream):
        return [c async for c in stream]

    handle = Handle([Dying(1), ok])  # output has left: no retry
    with pytest.raises(EngineUnavailableError):
        asyncio.run(read(engine(handle)._responses(request, stream=True)))
    assert handle.calls == 1
