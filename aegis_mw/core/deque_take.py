"""Many items off the left end of a deque in one call.

Every record passes through two deques: the inbox (``Recorder.drain`` takes
it in steps) and each sink's backlog (``SinkRunner`` splits its front into a
batch's requests and sessions, and removes it once stored). Written as Python
loops of ``popleft()`` calls and type checks, these cost about an eighth of
the pipeline's instructions for a record stored in SQLite
(``bench/instructions.py``, all-in row: about 1,600 of some 12,600); the
compiled versions (``_hotpath_c/deque_take.c``) do each in one call (a
backlog's stored front is removed by taking it and letting the list go). The functions here are the
reference the compiled ones are tested against, and the fallback where the
extension is not built or not used.

Each removal is one ``popleft()``: atomic under the GIL, so producers may keep
appending at the right end meanwhile.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

__all__ = ["DequeTake", "split_left", "take_left"]


def take_left(queue: deque[Any], count: int) -> list[Any]:
    """The first ``min(count, len(queue))`` items, removed from ``queue``."""
    pop = queue.popleft
    return [pop() for _ in range(min(count, len(queue)))]


def split_left(queue: deque[Any], count: int, kind: type) -> tuple[list[Any], list[Any]]:
    """Among the first ``min(count, len(queue))`` items, left in place: those
    whose type is exactly ``kind``, and the others, each in queue order."""
    matching: list[Any] = []
    others: list[Any] = []
    for item in itertools.islice(queue, max(count, 0)):
        (matching if type(item) is kind else others).append(item)
    return matching, others


@dataclass(frozen=True)
class DequeTake:
    """The two functions, compiled where they can be."""

    take_left: Callable[[deque[Any], int], list[Any]] = take_left
    split_left: Callable[[deque[Any], int, type], tuple[list[Any], list[Any]]] = split_left

    @classmethod
    def chosen(cls, compiled: ModuleType | None) -> DequeTake:
        """The compiled module's versions when it has them (an older build
        left in place may not), else the Python ones."""
        if compiled is None or not hasattr(compiled, "split_left"):
            return cls()
        return cls(compiled.take_left, compiled.split_left)


#: The Python versions, for owners built without the compiled module.
PYTHON = DequeTake()
