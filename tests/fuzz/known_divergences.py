"""KNOWN DIVERGENCES: the one place where fuzz inputs are excluded.

Each entry is a class of inputs on which the compiled path is known to differ
from the Python path (or to crash), with its issue. The fuzzer skips a case
that matches one (``hypothesis.event`` counts how many), so it runs green
while the fix is pending; the comparison itself is never weakened. When the
fix lands, delete the entry: the fuzzer then covers those inputs again, and
the refcount loop (``tests/refcount/drift.py``) runs the kinds it skipped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Known:
    name: str
    issue: str  # where it is described
    kind: str  # "asgi", "wsgi", "django" or "refcount"
    applies: Callable[[Any], bool]  # does this case belong to the class?


def _asgi_sends(case: Any) -> list[dict[str, Any]]:
    return [step[2] for step in case.steps if step[0] == "send" and isinstance(step[2], dict)]


def _odd_zerocopy_count(case: Any) -> bool:
    """A zerocopysend count that is a float, or an int whose sum can pass 2**63."""
    for message in _asgi_sends(case):
        count = message.get("count")
        if message.get("type") == "http.response.zerocopysend" and (
            isinstance(count, float) or (isinstance(count, int) and abs(count) >= 2**62)
        ):
            return True
    return False


KNOWN_DIVERGENCES: tuple[Known, ...] = (
    Known(
        "asgi-zerocopy-count-not-a-small-int",
        "issue 13, compiled path 3: the compiled item raises inside the app's send()",
        "asgi",
        _odd_zerocopy_count,
    ),
)


def known_divergence(kind: str, case: Any) -> str | None:
    """The name of the known divergence ``case`` belongs to, or None."""
    for known in KNOWN_DIVERGENCES:
        if known.kind == kind and known.applies(case):
            return known.name
    return None
