"""In-flight coalescing (single-flight) of chunk streams: identical requests share one computation.

A *flight* runs one computation — an async iterator of `GenerationChunk`s — in a task of
its own and keeps every chunk it produced. Each request that joins the flight reads the
chunks from the first one, at its own pace: a streamed request sends them as they come, a
non-streamed one collects them. The first request of a key *leads* (its state is the one
the computation writes); later ones *follow*.

* N identical concurrent requests -> one computation, N identical answers;
* an error of the computation reaches every reader;
* a reader that leaves (its client went away) never cancels the computation for the
  others, the leader included; only when every reader has gone is it cancelled;
* a key is forgotten as soon as its flight ends, so a later request computes afresh
  (the cache, not this, keeps answers). A request with no key gets a flight of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from serving.engines.base import GenerationChunk


@dataclass
class Flight:
    """One computation in progress and what it produced so far."""

    key: str | None
    chunks: list[GenerationChunk] = field(default_factory=list)
    done: bool = False
    error: BaseException | None = None
    readers: int = 0
    leader: Any = None  # the state of the request whose computation this is
    task: asyncio.Task[None] | None = None
    # Replaced after every new chunk: readers wait on the one they saw.
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def _publish(self) -> None:
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()

    def subscribe(self) -> AsyncIterator[GenerationChunk]:
        """Every chunk of the computation, from the first; raises its error. Leaving early is safe.

        The reader counts from this call (not from its first read), so the flight cannot be
        taken for abandoned between joining and reading.
        """
        self.readers += 1
        return self._read()

    async def _read(self) -> AsyncIterator[GenerationChunk]:
        i = 0
        try:
            while True:
                if i < len(self.chunks):
                    i += 1
                    yield self.chunks[i - 1]
                    continue
                if self.done:
                    if self.error is not None:
                        raise self.error
                    return
                await self.changed.wait()
        finally:
            self.readers -= 1
            if self.readers == 0 and self.task is not None and not self.task.done():
                # The last reader left: nobody needs the answer. Wait for the computation to
                # unwind so that what it holds (a queue slot, an engine stream) is free on return.
                self.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self.task


class Flights:
    """Single-flight of chunk streams by key (see the module docstring)."""

    def __init__(self) -> None:
        self._flights: dict[str, Flight] = {}

    def __len__(self) -> int:
        """Flights in progress under a key."""
        return len(self._flights)

    def live(self, key: str | None) -> Flight | None:
        """The flight `key` can join now: in progress, with a reader left to keep it going."""
        flight = self._flights.get(key) if key is not None else None
        if flight is None or flight.done or flight.readers == 0:
            return None
        return flight

    def start(self, key: str | None, compute: Callable[[], AsyncIterator[GenerationChunk]]) -> Flight:
        """Run `compute()` in a task of its own as the flight of `key` (None: a flight nobody else can join)."""
        flight = Flight(key)
        flight.task = asyncio.get_running_loop().create_task(self._drive(flight, compute),
                                                             name=f"flight:{(key or '-')[:16]}")
        if key is not None:
            self._flights[key] = flight
        return flight

    async def _drive(self, flight: Flight, compute: Callable[[], AsyncIterator[GenerationChunk]]) -> None:
        # Outcomes go to the readers, never out of this task (nobody awaits it but a last reader).
        chunks = compute()
        try:
            async for chunk in chunks:
                flight.chunks.append(chunk)
                flight._publish()
        except asyncio.CancelledError:
            flight.error = asyncio.CancelledError()
            raise
        except Exception as exc:
            flight.error = exc
        finally:
            await chunks.aclose()  # an engine stream left behind is closed now, not at GC
            flight.done = True
            if self._flights.get(flight.key) is flight:  # type: ignore[arg-type]
                del self._flights[flight.key]  # type: ignore[arg-type]
            flight._publish()
