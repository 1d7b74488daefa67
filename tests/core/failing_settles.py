"""A pending-sums settle refused memory at each of its allocations in turn."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest


def settle_failing_each_allocation(pending: Any, state: Callable[[], Any]) -> int:
    """Settle ``pending`` with allocations failing from the first on, then
    from the second on, and so on until one settle gets all it needs. After
    every failed try, ``state()`` and the pending sizes must be as before it.
    Returns how many tries failed."""
    testcapi = pytest.importorskip("_testcapi")
    before, sizes, failures = state(), pending.sizes(), 0
    for start in range(400):
        testcapi.set_nomemory(start, 0)
        try:
            pending.settle()
        except MemoryError:
            failures += 1
        else:
            return failures
        finally:
            testcapi.remove_mem_hooks()
        assert state() == before
        assert pending.sizes() == sizes
    pytest.fail("settle never got the memory it needed")
