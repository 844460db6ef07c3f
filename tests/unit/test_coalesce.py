"""In-flight coalescing of chunk streams (`serving.pipeline.Flights`): N identical readers, one computation."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from serving.engines.base import GenerationChunk, GenerationRequest
from serving.errors import EngineUnavailableError
from serving.pipeline import Flights
from tests.unit.fakes import FakeEngine


async def read_all(flight) -> str:
    return "".join([c.text async for c in flight.subscribe()])


def test_readers_of_one_flight_share_one_computation_and_read_every_chunk():
    engine = FakeEngine("validator", ["Paris", " is", "."], delay_s=0.02)
    req = GenerationRequest(messages=[{"role": "user", "content": "Capital of France?"}], temperature=0)

    async def main():
        flights = Flights()
        flight = flights.start("key-a", lambda: engine.stream(req))
        first = asyncio.create_task(read_all(flight))
        await asyncio.sleep(0.03)  # a reader joining late still reads from the first chunk
        joined = flights.live("key-a")
        texts = await asyncio.gather(first, *(read_all(joined) for _ in range(3)))
        return texts, joined is flight, len(flights)

    texts, same, left = asyncio.run(main())
    assert len(engine.requests) == 1
    assert texts == ["Paris is."] * 4 and same
    assert left == 0  # the key is forgotten when the flight ends


def test_a_later_request_computes_afresh_and_keys_do_not_mix():
    calls: list[str] = []

    async def compute(k: str):
        calls.append(k)
        await asyncio.sleep(0.01)
        yield GenerationChunk(text=k)

    async def main():
        flights = Flights()
        a, b = flights.start("a", lambda: compute("a")), flights.start("b", lambda: compute("b"))
        first = await asyncio.gather(read_all(a), read_all(b))
        assert flights.live("a") is None  # ended: nothing to join
        again = await read_all(flights.start("a", lambda: compute("a")))
        return first, again

    first, again = asyncio.run(main())
    assert first == ["a", "b"] and again == "a" and calls == ["a", "b", "a"]


def test_an_error_reaches_every_reader():
    engine = FakeEngine("validator", ["x"], delay_s=0.02, fail=True)

    async def main():
        flights = Flights()
        flight = flights.start("k", lambda: engine.stream(GenerationRequest(prompt="p")))
        out = await asyncio.gather(*(read_all(flight) for _ in range(4)), return_exceptions=True)
        return out, len(flights)

    out, left = asyncio.run(main())
    assert len(engine.requests) == 1 and left == 0
    assert all(isinstance(e, EngineUnavailableError) for e in out) and len(out) == 4


def test_a_reader_that_leaves_does_not_cancel_the_others():
    done = []

    async def compute():
        for i in range(5):
            await asyncio.sleep(0.01)
            yield GenerationChunk(text=str(i))
        done.append(True)

    async def main():
        flights = Flights()
        flight = flights.start("k", compute)
        leaver = flight.subscribe()
        await anext(leaver)
        follower = asyncio.create_task(read_all(flight))
        await asyncio.sleep(0)  # the follower has joined
        await leaver.aclose()  # the first reader (the leader) leaves after one chunk
        return await follower

    assert asyncio.run(main()) == "01234" and done == [True]


def test_the_computation_is_cancelled_when_the_last_reader_leaves():
    async def main():
        state = {"cancelled": False}

        async def compute():
            try:
                for i in range(100):
                    await asyncio.sleep(0.01)
                    yield GenerationChunk(text=str(i))
            except asyncio.CancelledError:
                state["cancelled"] = True
                raise

        flights = Flights()
        flight = flights.start("k", compute)
        readers = [flight.subscribe(), flight.subscribe()]
        for r in readers:
            await anext(r)
        await readers[0].aclose()
        assert not flight.task.done()  # one reader is left
        await readers[1].aclose()
        # The last reader's close waited for the computation to unwind.
        return state["cancelled"], flight.task.done(), flights.live("k")

    assert asyncio.run(main()) == (True, True, None)


def test_a_flight_without_a_key_is_never_joined():
    async def main():
        flights = Flights()

        async def compute():
            await asyncio.sleep(0.01)
            yield GenerationChunk(text="x")

        flight = flights.start(None, compute)
        live = flights.live(None)
        text = await read_all(flight)
        return live, text, len(flights)

    assert asyncio.run(main()) == (None, "x", 0)


@pytest.mark.parametrize("leave_at", [0, 2])
def test_no_task_is_left_behind(leave_at: int):
    async def main():
        async def compute():
            for i in range(3):
                await asyncio.sleep(0.005)
                yield GenerationChunk(text=str(i))

        flights = Flights()
        flight = flights.start("k", compute)
        async with contextlib.aclosing(flight.subscribe()) as chunks:
            n = 0
            async for _ in chunks:
                if n == leave_at:
                    break
                n += 1
        return flight.task.done()

    assert asyncio.run(main()) is True
