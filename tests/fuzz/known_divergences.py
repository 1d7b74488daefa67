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


KNOWN_DIVERGENCES: tuple[Known, ...] = (
    Known(
        "asgi-invalid-throw-arguments-into-a-bare-iterator-app",
        "by construction, not pending a fix: a server's throw(exc, value) (arguments no "
        "throw() accepts) while the app's awaitable is a plain iterator with no throw(). "
        "CPython refuses such arguments without entering the frame that awaits the "
        "iterator; on the Python path that frame is the middleware's own coroutine, which "
        "stays suspended and in flight. On the compiled path the middleware's coroutine "
        "awaits the compiled request, whose throw() refuses them the same way, and CPython "
        "then raises that TypeError in the awaiting frame, which ends the request (recorded "
        "as 499). Both raise the same TypeError to the server; no server sends these.",
        "asgi",
        lambda case: case.app_kind == "bare-iterator" and case.on_suspend.startswith("throw-inv"),
    ),
)


def known_divergence(kind: str, case: Any) -> str | None:
    """The name of the known divergence ``case`` belongs to, or None."""
    for known in KNOWN_DIVERGENCES:
        if known.kind == kind and known.applies(case):
            return known.name
    return None
