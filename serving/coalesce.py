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

Streams: a streaming leader cannot hand its chunks to followers cheaply, but followers
can wait for its *finished* answer: the leader opens a flight with `lead`, streams, and
calls `Lead.resolve(generation)` at the end (or `fail`/`abandon`); followers call
`follow` and get the finished value (or `FlightAbandoned`, after which they compute
themselves).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


class FlightAbandoned(RuntimeError):
    """The leader gave up (e.g. its stream was dropped) without an answer: compute it yourself."""


@dataclass
class _Flight(Generic[T]):
    future: asyncio.Future[T]
    task: asyncio.Task[None] | None = None
    waiters: int = 0
    followers: int = field(default=0)


class Lead(Generic[T]):
    """The leader's side of a flight opened with `Coalescer.lead` (streaming)."""

    def __init__(self, owner: Coalescer[T], key: str, flight: _Flight[T]) -> None:
        self._owner, self.key, self._flight = owner, key, flight

    def resolve(self, value: T) -> None:
        """Hand the finished value to the followers and close the flight."""
        self._finish(lambda f: f.set_result(value))

    def fail(self, exc: BaseException) -> None:
        """Hand an error to the followers and close the flight."""
        self._finish(lambda f: f.set_exception(exc))

    def abandon(self) -> None:
        """No answer will come (idempotent; a no-op after resolve/fail)."""
        self._finish(lambda f: f.set_exception(FlightAbandoned(f"the leader of {self.key[:16]} gave up")))

    def _finish(self, settle: Callable[[asyncio.Future[T]], None]) -> None:
        if not self._flight.future.done():
            settle(self._flight.future)
            _mark_seen(self._flight.future)
        self._owner._forget(self.key, self._flight)


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
        return key in self._flights

    async def run(self, key: str, compute: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """`compute()` once per key at a time; returns (value, shared) where `shared` is True for followers."""
        flight = self._flights.get(key)
        if flight is not None and (flight.future.done() or (flight.task is not None and flight.task.cancelling())):
            flight = None  # ending (its last waiter left): start a new one rather than share its cancellation
        shared = flight is not None
        if flight is None:
            loop = asyncio.get_running_loop()
            flight = _Flight(loop.create_future())
            flight.task = loop.create_task(self._drive(key, flight, compute), name=f"coalesce:{key[:16]}")
            self._flights[key] = flight
        else:
            self.coalesced += 1
        flight.waiters += 1
        try:
            value = await asyncio.shield(flight.future)
        except asyncio.CancelledError:
            flight.waiters -= 1
            if flight.waiters == 0 and flight.task is not None and not flight.task.done():
                flight.task.cancel()  # the last waiter left: nobody needs the answer
            raise
        flight.waiters -= 1
        return value, shared

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

    def lead(self, key: str) -> Lead[T] | None:
        """Open a flight the caller drives itself (streaming); None when one is already in flight."""
        if key in self._flights:
            return None
        flight: _Flight[T] = _Flight(asyncio.get_running_loop().create_future())
        self._flights[key] = flight
        return Lead(self, key, flight)

    async def follow(self, key: str) -> T:
        """Wait for the value of the flight in progress for `key` (KeyError when none)."""
        flight = self._flights[key]
        self.coalesced += 1
        flight.followers += 1
        return await asyncio.shield(flight.future)

    def _forget(self, key: str, flight: _Flight[T]) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]


def _mark_seen(future: asyncio.Future) -> None:
    """Retrieve a settled future's exception so asyncio does not log it when no waiter is left."""
    if future.done() and not future.cancelled():
        future.exception()
