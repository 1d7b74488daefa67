"""KNOWN DIVERGENCES: the one place where fuzz inputs are excluded.

Each entry is a class of inputs on which the compiled path is known to differ
from the Python path (or to crash), with its issue. The fuzzer skips a case
that matches one (``hypothesis.event`` counts how many), so it runs green
while the fix is pending; the comparison itself is never weakened. When the
fix lands, delete the entry: the fuzzer then covers those inputs again, and
the refcount loop (``tests/refcount/drift.py``) runs the kinds it skipped.
An entry that is not pending a fix says why it cannot be one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Known:
    name: str
    issue: str  # where it is described
    kind: str  # "asgi", "wsgi" or "django"
    applies: Callable[[Any], bool]  # does this case belong to the class?


KNOWN_DIVERGENCES: tuple[Known, ...] = ()


def known_divergence(kind: str, case: Any) -> str | None:
    """The name of the known divergence ``case`` belongs to, or None."""
    for known in KNOWN_DIVERGENCES:
        if known.kind == kind and known.applies(case):
            return known.name
    return None
