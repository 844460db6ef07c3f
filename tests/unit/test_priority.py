"""Priority classes: resolving a request's class from the `priority` section, and the gate that lets
interactive requests go ahead of batch ones under a queue."""

from __future__ import annotations

import asyncio

import pytest

from serving.config import AppConfig, PriorityConfig
from serving.errors import InvalidRequestError
from serving.priority import PriorityGate, resolve_priority
from tests.unit.fakes import FakeClock

INTERACTIVE, BATCH = 0, 10


def test_resolve_priority_reads_the_priority_section():
    """Classes, header and default come from `priority` (renamed classes and header here)."""
    cfg = AppConfig(scout={"model": "a"}, validator={"model": "b"}, priority={
        "priority_header": "x-tier", "default_priority": "standard",
        "classes": {"premium": 0, "standard": 5, "bulk": 20}}).priority
    assert isinstance(cfg, PriorityConfig)
    assert (resolve_priority(cfg).name, resolve_priority(cfg).value) == ("standard", 5)
    assert resolve_priority(cfg, header="Premium").value == 0
    assert resolve_priority(cfg, header="premium", ceiling="bulk").source == "tenant"
    with pytest.raises(InvalidRequestError, match="unknown priority class 'batch' in x-tier; use one of: bulk, "
                       "premium, standard") as e:
        resolve_priority(cfg, header="batch")
    assert e.value.param == "x-tier"


async def _run(gate: PriorityGate, arrivals: list[tuple[str, int]], hold_s: float = 0.01) -> list[str]:
    order: list[str] = []

    async def request(name: str, prio: int) -> None:
        async with gate.slot(prio):
            order.append(name)
            await asyncio.sleep(hold_s)

    tasks = []
    for name, prio in arrivals:
        tasks.append(asyncio.create_task(request(name, prio)))
        await asyncio.sleep(0)  # arrive in this order
    await asyncio.gather(*tasks)
    return order


def test_interactive_requests_overtake_queued_batch_requests():
    gate = PriorityGate(1)
    arrivals = [("b1", BATCH), ("b2", BATCH), ("b3", BATCH), ("i1", INTERACTIVE), ("b4", BATCH), ("i2", INTERACTIVE)]
    # b1 holds the only slot; everyone else queues: interactive first, each class in arrival order.
    assert asyncio.run(_run(gate, arrivals)) == ["b1", "i1", "i2", "b2", "b3", "b4"]
    assert gate.active == 0 and gate.waiting == 0


def test_free_slots_are_taken_at_once_without_reordering():
    gate = PriorityGate(3)
    assert asyncio.run(_run(gate, [("b1", BATCH), ("b2", BATCH), ("i1", INTERACTIVE)])) == ["b1", "b2", "i1"]


def test_aging_lets_a_long_waiting_batch_request_through():
    clock = FakeClock(0.0)
    gate = PriorityGate(1, aging_per_s=1.0, clock=clock)

    async def main():
        await gate.acquire(INTERACTIVE)  # holder
        order = []

        async def waiter(name, prio):
            await gate.acquire(prio)
            order.append(name)

        old_batch = asyncio.create_task(waiter("old-batch", BATCH))
        await asyncio.sleep(0)
        clock.now = 20.0  # it has waited 20 s: effective priority 10 - 20 < 0
        new_interactive = asyncio.create_task(waiter("new-interactive", INTERACTIVE))
        await asyncio.sleep(0)
        gate.release()
        await asyncio.sleep(0)
        gate.release()
        await asyncio.gather(old_batch, new_interactive)
        return order

    assert asyncio.run(main()) == ["old-batch", "new-interactive"]


def test_a_cancelled_waiter_leaves_the_queue_and_its_slot_is_not_lost():
    gate = PriorityGate(1)

    async def main():
        await gate.acquire()
        waiting = asyncio.create_task(gate.acquire(INTERACTIVE))
        other = asyncio.create_task(gate.acquire(BATCH))
        await asyncio.sleep(0)
        assert gate.waiting == 2
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        gate.release()
        await asyncio.wait_for(other, 1)  # the slot went to the remaining waiter
        gate.release()
        return gate.active, gate.waiting

    assert asyncio.run(main()) == (0, 0)


def test_limit_must_be_positive():
    with pytest.raises(ValueError):
        PriorityGate(0)


def test_a_full_queue_refuses_at_once_and_a_long_wait_gives_up_with_retry_after():
    import asyncio

    import pytest

    from serving.errors import OverloadedError, to_openai_error
    from serving.priority import PriorityGate

    async def go():
        gate = PriorityGate(1, max_waiting=2, max_wait_s=0.2)
        await gate.acquire()  # the only slot, held
        waiting = [asyncio.create_task(gate.acquire()) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(OverloadedError) as full:
            await gate.acquire()  # a third waiter: refused at once
        timed_out = await asyncio.gather(*waiting, return_exceptions=True)
        return full.value, timed_out, gate

    full, timed_out, gate = asyncio.run(go())
    assert to_openai_error(full)[0] == 429 and full.retry_after_s >= 1
    assert all(isinstance(e, OverloadedError) and to_openai_error(e)[0] == 503 for e in timed_out)
    assert gate.waiting == 0 and gate.active == 1  # the holder still holds; nobody is left queued


def test_a_slot_granted_as_the_deadline_passes_is_handed_on():
    import asyncio

    from serving.priority import PriorityGate

    async def go():
        gate = PriorityGate(1, max_wait_s=0.05)
        await gate.acquire()
        late = asyncio.create_task(gate.acquire())
        await asyncio.sleep(0.05)
        gate.release()  # right at the deadline
        (outcome,) = await asyncio.gather(late, return_exceptions=True)
        return outcome, gate.active, gate.waiting

    outcome, active, waiting = asyncio.run(go())
    # Whatever won the race, the slot is held by the waiter that got it, or free: never lost.
    assert waiting == 0 and active == (0 if isinstance(outcome, Exception) else 1)
