"""Reconnect delays as a small immutable value: each failure gives the next one."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Callable

__all__ = ["Backoff"]


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter and a cap.

    The n-th delay (n counted from 0) is ``min(maximum, initial * multiplier**n)`` shrunk
    by a random fraction of up to ``jitter``, so that many clients cut off by the same
    server restart do not all come back in the same instant. ``reset()`` goes back to the
    first delay once the server proves it works again (an ack, or, without acks, bytes
    its kernel took): a connect alone is no proof, since a server that accepts and then
    cuts every connection would otherwise be retried at the first delay forever.

    With the defaults, the delays after 1, 2, ... failures in a row are 0.05, 0.1, 0.2,
    0.4, 0.8, 1.6, 3.2, 6.4, then 10 s, each shortened by up to half by the jitter.
    """

    initial: float = 0.05
    maximum: float = 10.0
    multiplier: float = 2.0
    jitter: float = 0.5
    attempts: int = 0

    def __post_init__(self) -> None:
        if self.initial < 0 or self.maximum < self.initial:
            raise ValueError("backoff needs 0 <= initial <= maximum")
        if self.multiplier < 1:
            raise ValueError("backoff multiplier must be at least 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("backoff jitter is a fraction between 0 and 1")

    def delay(self, rand: Callable[[], float] = random.random) -> float:
        """The delay before the next attempt."""
        # Cap the exponent so that a long outage cannot overflow the float.
        base = min(self.maximum, self.initial * self.multiplier ** min(self.attempts, 64))
        return base * (1.0 - self.jitter * rand())

    def longest_delay(self, rand: Callable[[], float] = random.random) -> float:
        """The maximum delay, with the same jitter: for failures that retrying soon
        cannot fix (a refused key). The backoff itself is left as it is, so its next
        ``reset()`` still starts again from ``initial``."""
        return self.maximum * (1.0 - self.jitter * rand())

    def next(self) -> Backoff:
        """The backoff after one more failed attempt."""
        return replace(self, attempts=self.attempts + 1)

    def reset(self) -> Backoff:
        return replace(self, attempts=0)
