"""Helpers shared by the tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.05,
               message: str = "the condition did not hold in time") -> T:
    """Call ``predicate`` until it returns something truthy and return that, failing the test with
    ``message`` after ``timeout`` seconds. Waiting on the condition itself, not a fixed sleep, keeps
    a test fast when the machine is fast and correct when it is slow. An exception raised by the
    predicate (a failed assertion, say) ends the wait at once."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"{message} (waited {timeout:g} s)")
        time.sleep(interval)
