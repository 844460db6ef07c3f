"""In-flight coalescing: N identical concurrent calls -> one computation, N identical answers."""

from __future__ import annotations

import asyncio

import pytest

from serving.coalesce import Coalescer
from serving.engines.base import GenerationRequest
from tests.unit.fakes import FakeEngine


def test_identical_concurrent_requests_share_one_generation():
    engine = FakeEngine("validator", ["Paris", "."], delay_s=0.05)
    flights: Coalescer = Coalescer()

    async def main():
        req = GenerationRequest(messages=[{"role": "user", "content": "Capital of France?"}], temperature=0)
        return await asyncio.gather(*(flights.run("key-a", lambda: engine.generate(req)) for _ in range(8)))

    results = asyncio.run(main())
    assert len(engine.requests) == 1
    gens = [g for g, _ in results]
    assert all(g is gens[0] for g in gens) and gens[0].text == "Paris."
    assert [shared for _, shared in results] == [False] + [True] * 7
    assert flights.coalesced == 7 and len(flights) == 0


def test_different_keys_and_later_calls_compute_again():
    calls = []

    async def compute(k):
        calls.append(k)
        await asyncio.sleep(0.01)
        return k

    async def main():
        flights: Coalescer = Coalescer()
        first = await asyncio.gather(flights.run("a", lambda: compute("a")), flights.run("b", lambda: compute("b")))
        again = await flights.run("a", lambda: compute("a"))  # the first flight ended: computed afresh
        return first, again, len(flights)

    first, again, left = asyncio.run(main())
    assert [v for v, _ in first] == ["a", "b"] and again == ("a", False)
    assert calls == ["a", "b", "a"] and left == 0


def test_an_error_reaches_every_waiter():
    engine = FakeEngine("validator", ["x"], delay_s=0.02, fail=True)

    async def main():
        flights: Coalescer = Coalescer()
        req = GenerationRequest(prompt="p")
        out = await asyncio.gather(*(flights.run("k", lambda: engine.generate(req)) for _ in range(4)),
                                   return_exceptions=True)
        return out, len(flights)

    out, left = asyncio.run(main())
    assert len(engine.requests) == 1 and left == 0
    assert all(type(e).__name__ == "EngineUnavailableError" for e in out)


def test_a_cancelled_waiter_does_not_cancel_the_work_of_the_others():
    started, finished = [], []

    async def compute():
        started.append(1)
        await asyncio.sleep(0.05)
        finished.append(1)
        return "answer"

    async def main():
        flights: Coalescer = Coalescer()
        leader = asyncio.create_task(flights.run("k", compute))
        follower = asyncio.create_task(flights.run("k", compute))
        await asyncio.sleep(0.01)
        leader.cancel()  # the first client hangs up
        with pytest.raises(asyncio.CancelledError):
            await leader
        return await follower

    assert asyncio.run(main()) == ("answer", True)
    assert started == [1] and finished == [1]


def test_the_work_is_cancelled_when_every_waiter_has_gone():
    finished = []

    async def compute():
        await asyncio.sleep(0.05)
        finished.append(1)

    async def main():
        flights: Coalescer = Coalescer()
        tasks = [asyncio.create_task(flights.run("k", compute)) for _ in range(3)]
        await asyncio.sleep(0.01)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(0.06)
        # A new call after the abandoned flight computes afresh and is not cancelled by it.
        value = await flights.run("k", lambda: asyncio.sleep(0, result="new"))
        return value, len(flights)

    assert asyncio.run(main()) == (("new", False), 0)
    assert finished == []


def test_a_follower_is_a_waiter_like_the_others():
    """A streamed request following a flight keeps it alive when the request that started it leaves,
    and can no longer follow once the flight is over."""
    async def main():
        flights: Coalescer = Coalescer()
        leader = asyncio.create_task(flights.run("k", lambda: asyncio.sleep(0.05, result="answer")))
        await asyncio.sleep(0)
        assert "k" in flights
        follower = asyncio.create_task(flights.follow("k"))
        await asyncio.sleep(0.01)
        leader.cancel()  # the first client hangs up; the follower still needs the answer
        with pytest.raises(asyncio.CancelledError):
            await leader
        value = await follower
        with pytest.raises(KeyError):
            await flights.follow("k")  # flight over: nothing to follow
        return value, len(flights), flights.coalesced

    assert asyncio.run(main()) == ("answer", 0, 1)
