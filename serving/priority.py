"""Priority classes: which class a request belongs to, and a gate that serves classes in order.

A request's class is the one its priority header names (`priority.priority_header`, e.g.
``x-infopt-priority: batch``), else its tenant's (`auth.tenants.<name>.priority`, see
`serving.tenancy`), else `priority.default_priority`. A tenant's class is also the best it may
name: a batch tenant asking for interactive stays batch.
Each class maps to a vLLM priority (lower is scheduled first); vLLM honours it when the
engine runs with ``scheduling_policy="priority"``.

`PriorityGate` is where *we* queue: a bounded number of holders, and waiters admitted by
(priority, arrival) rather than by arrival alone. An optional aging rate lets a
long-waiting low-priority request move up, so batch traffic is delayed, never starved.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from serving.config import PriorityConfig
from serving.errors import InvalidRequestError, OverloadedError


@dataclass(frozen=True)
class Priority:
    """A resolved priority class and its vLLM priority value."""

    name: str
    value: int
    source: str  # 'header', 'tenant' or 'default'


def resolve_priority(config: PriorityConfig, header: str | None = None, ceiling: str | None = None) -> Priority:
    """The class of a request from its priority header (`config.priority_header`'s value) and its tenant's class
    `ceiling` (its default, and the best class it may name: a header asking for better gets the ceiling); an
    unknown class is a 400."""
    if header is not None and header.strip():
        name = header.strip().lower()
        if name not in config.classes:
            raise InvalidRequestError(
                f"unknown priority class '{header.strip()}' in {config.priority_header}; "
                f"use one of: {', '.join(sorted(config.classes))}",
                param=config.priority_header,
            )
        if ceiling is None or config.classes[name] >= config.classes[ceiling]:
            return Priority(name, config.classes[name], "header")
    if ceiling is not None:
        return Priority(ceiling, config.classes[ceiling], "tenant")
    name = config.default_priority
    return Priority(name, config.classes[name], "default")


@dataclass
class _Waiter:
    priority: int
    seq: int
    since: float
    future: asyncio.Future[None]


class PriorityGate:
    """At most `limit` concurrent holders; waiters enter by lowest priority value, then arrival.

    With `aging_per_s > 0`, a waiter's effective priority drops by that much per second
    waited (a batch request at 10 waiting 20 s with aging 0.5 competes as 0).
    Cancellation is safe: a cancelled waiter leaves the queue, and a slot granted to a
    waiter cancelled at that moment is passed on.
    """

    def __init__(self, limit: int, *, aging_per_s: float = 0.0, max_waiting: int | None = None,
                 max_wait_s: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        # Bounds of the queue: beyond `max_waiting` a request is refused at once, after `max_wait_s` it gives up.
        self.max_waiting = max_waiting
        self.max_wait_s = max_wait_s
        self.aging_per_s = aging_per_s
        self._clock = clock
        self._active = 0
        self._waiters: list[_Waiter] = []
        self._seq = itertools.count()

    @property
    def active(self) -> int:
        """Holders now."""
        return self._active

    @property
    def waiting(self) -> int:
        """Requests queued now."""
        return sum(not w.future.done() for w in self._waiters)

    def _rank(self, w: _Waiter, now: float) -> tuple[float, int]:
        return (w.priority - self.aging_per_s * (now - w.since), w.seq)

    async def acquire(self, priority: int = 0) -> None:
        """Wait for a slot; lower `priority` values go first."""
        if self._active < self.limit and not self._waiters:
            self._active += 1
            return
        if self.max_waiting is not None and self.waiting >= self.max_waiting:
            raise OverloadedError(f"{self.waiting} requests are already waiting for one of {self.limit} slots",
                                  retry_after_s=self._retry_after())
        w = _Waiter(priority, next(self._seq), self._clock(), asyncio.get_running_loop().create_future())
        self._waiters.append(w)
        try:
            await asyncio.wait_for(asyncio.shield(w.future), self.max_wait_s)
        except TimeoutError:
            if w in self._waiters:
                self._waiters.remove(w)
            elif w.future.done() and not w.future.cancelled():
                self.release()  # the slot came as the deadline passed: hand it on
            raise OverloadedError(f"no slot came free within {self.max_wait_s:g} s", status_code=503,
                                  retry_after_s=self._retry_after()) from None
        except asyncio.CancelledError:
            if w in self._waiters:
                self._waiters.remove(w)
            elif w.future.done() and not w.future.cancelled():
                # The slot was handed to us as we were cancelled: hand it on.
                self.release()
            raise

    def _retry_after(self) -> float:
        """When to try again: about the time the queue ahead needs, at least a second."""
        return max(1.0, min(60.0, (self.waiting + 1) / self.limit))

    def release(self) -> None:
        """Give a slot back: the best waiter gets it, or it becomes free."""
        now = self._clock()
        while self._waiters:
            best = min(self._waiters, key=lambda w: self._rank(w, now))
            self._waiters.remove(best)
            if not best.future.done():
                best.future.set_result(None)  # the slot passes over; _active is unchanged
                return
        self._active -= 1

    @asynccontextmanager
    async def slot(self, priority: int = 0) -> AsyncIterator[None]:
        """`async with gate.slot(p):` holds one slot for the block."""
        await self.acquire(priority)
        try:
            yield
        finally:
            self.release()
