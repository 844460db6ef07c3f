"""In-flight coalescing (single-flight): identical requests share one computation.

When a request arrives while an identical one (same exact cache key) is being computed,
it waits for that answer instead of computing it again. The first caller of a key is the
*leader*; later callers are *followers* of the same flight.

* N identical concurrent calls -> one computation, N identical results (the same object:
  treat it as read-only);
* an error of the computation reaches every waiter;
* a waiter that is cancelled (its client went away) does not cancel the work for the
  others; only when every waiter has gone is the computation cancelled;
* a key is forgotten as soon as its flight ends, so a later request computes afresh
  (the cache, not this, keeps answers).

Streams: a streamed request may `follow` a flight in progress: it waits for the finished
value as one more waiter (so its client leaving counts like any other's) and replays it. A
streamed computation itself is not shared.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass
class _Flight(Generic[T]):
    future: asyncio.Future[T]
    task: asyncio.Task[None] | None = None
    waiters: int = 0


class Coalescer(Generic[T]):
    """Single-flight by string key."""

    def __init__(self) -> None:
        self._flights: dict[str, _Flight[T]] = {}
        #: Calls answered by another call's computation (for metrics and tests).
        self.coalesced = 0

    def __len__(self) -> int:
        """Flights in progress."""
        return len(self._flights)

    def __contains__(self, key: str) -> bool:
        """Whether a flight for `key` can be joined now."""
        return self._live(key) is not None

    def _live(self, key: str) -> _Flight[T] | None:
        """The flight in progress for `key`, unless it is ending (its last waiter left)."""
        flight = self._flights.get(key)
        if flight is None or flight.future.done() or (flight.task is not None and flight.task.cancelling()):
            return None
        return flight

    async def run(self, key: str, compute: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """`compute()` once per key at a time; returns (value, shared) where `shared` is True for followers."""
        flight = self._live(key)  # an ending flight is not joined: its cancellation is not shared
        if flight is None:
            loop = asyncio.get_running_loop()
            flight = _Flight(loop.create_future())
            flight.task = loop.create_task(self._drive(key, flight, compute), name=f"coalesce:{key[:16]}")
            self._flights[key] = flight
            return await self._wait(flight), False
        self.coalesced += 1
        return await self._wait(flight), True

    async def follow(self, key: str) -> T:
        """Wait for the value of the flight in progress for `key`, as one more waiter (KeyError when none)."""
        flight = self._live(key)
        if flight is None:
            raise KeyError(key)
        self.coalesced += 1
        return await self._wait(flight)

    async def _wait(self, flight: _Flight[T]) -> T:
        flight.waiters += 1
        try:
            value = await asyncio.shield(flight.future)
        except asyncio.CancelledError:
            flight.waiters -= 1
            if flight.waiters == 0 and flight.task is not None and not flight.task.done():
                flight.task.cancel()  # the last waiter left: nobody needs the answer
            raise
        flight.waiters -= 1
        return value

    async def _drive(self, key: str, flight: _Flight[T], compute: Callable[[], Awaitable[T]]) -> None:
        # Outcomes go to the shared future, never out of this task (nobody awaits the task itself).
        try:
            value = await compute()
        except asyncio.CancelledError:
            flight.future.cancel()
            raise
        except Exception as exc:
            if not flight.future.done():
                flight.future.set_exception(exc)
                _mark_seen(flight.future)
        else:
            if not flight.future.done():
                flight.future.set_result(value)
        finally:
            self._forget(key, flight)

    def _forget(self, key: str, flight: _Flight[T]) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]


def _mark_seen(future: asyncio.Future) -> None:
    """Retrieve a settled future's exception so asyncio does not log it when no waiter is left."""
    if future.done() and not future.cancelled():
        future.exception()
