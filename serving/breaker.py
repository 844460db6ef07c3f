"""Circuit breakers: a dependency that keeps failing costs its timeout once, not on every request.

After `failures` consecutive failures (errors or timeouts) the breaker *opens*: callers skip
the dependency at once (the stage records why and takes its fallback: no plan, a cache
bypass, straight to the Validator). After `reset_s` one call is let through (*half-open*):
its success closes the breaker, its failure opens it for another `reset_s`.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class CircuitBreaker:
    """One dependency's breaker (see the module docstring)."""

    def __init__(self, name: str, failures: int = 3, reset_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.threshold = failures
        self.reset_s = reset_s
        self.clock = clock
        self.failures = 0
        self.opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half_open" if self.clock() - self.opened_at >= self.reset_s else "open"

    def allow(self) -> bool:
        """Whether to call the dependency now (in half-open state: one probe at a time)."""
        state = self.state
        if state == "closed":
            return True
        if state == "half_open" and not self._probing:
            self._probing = True
            return True
        return False

    def success(self) -> None:
        self.failures, self.opened_at, self._probing = 0, None, False

    def failure(self) -> None:
        self.failures += 1
        self._probing = False
        if self.opened_at is not None or self.failures >= self.threshold:
            self.opened_at = self.clock()  # (re)open: a failed probe waits another reset_s

    def describe(self) -> str:
        return f"{self.name} circuit open after {self.failures} failures (retried every {self.reset_s:g} s)"
