"""Waiting for a state in tests: poll it until a deadline, never sleep and hope."""

from __future__ import annotations

import time
from typing import Callable


def wait_until(predicate: Callable[[], object], timeout: float = 20.0) -> bool:
    """True as soon as ``predicate()`` is; False if ``timeout`` seconds pass first.

    The deadline is generous on purpose: it only matters when the test is failing, and a
    loaded machine must not make a passing test fail.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return bool(predicate())
        time.sleep(0.005)
    return True
