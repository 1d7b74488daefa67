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
    kind: str  # "asgi", "wsgi" or "django"
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


def _wsgi_steps(case: Any) -> list[tuple[Any, ...]]:
    """The app's steps, those of its generator included."""
    steps = list(case.steps)
    if case.result[0] == "generator":
        steps += case.result[1]
    return steps


def _bad_start_call(case: Any) -> bool:
    return any(s[0] == "start" and s[4] in ("no-args", "extra-arg") for s in _wsgi_steps(case))


def _iterable(case: Any) -> Any:
    return case.result[1] if case.result[0] == "iterable" else None


def _returns_start_response(case: Any) -> bool:
    iterable = _iterable(case)
    return case.result[0] == "start_response" or (
        iterable is not None and iterable.iter_how == "start_response"
    )


def _iter_calls_next_on_start_response(case: Any) -> bool:
    iterable = _iterable(case)
    return iterable is not None and iterable.iter_how == "next-start"


def _generator_exit_while_iterating(case: Any) -> bool:
    """The app raises GeneratorExit from __next__, a generator or a chunk's len()."""
    chunks = list(case.result[1]) if case.result[0] in ("list", "tuple") else []
    iterable = _iterable(case)
    if iterable is not None:
        chunks += iterable.chunks
        if iterable.next_raises is not None and iterable.next_raises[1] == "GeneratorExit":
            return True
    if case.result[0] == "generator":
        chunks += [step[1] for step in case.result[1] if step[0] == "yield"]
        if any(step == ("raise", "GeneratorExit") for step in case.result[1]):
            return True
    return ("len-raises", "GeneratorExit") in chunks


def _stop_iteration_while_counting(case: Any) -> bool:
    """StopIteration from the iterable's __iter__, or from a chunk's len()."""
    iterable = _iterable(case)
    if iterable is not None and iterable.iter_how == "raise:StopIteration":
        return True
    chunks = list(case.result[1]) if case.result[0] in ("list", "tuple") else []
    chunks += iterable.chunks if iterable is not None else []
    if case.result[0] == "generator":
        chunks += [step[1] for step in case.result[1] if step[0] == "yield"]
    return ("len-raises", "StopIteration") in chunks


def _django_container_len_raises_stop_iteration(case: Any) -> bool:
    kind, value = case.answer
    return kind == "http-odd-container" and ("len-raises", "StopIteration") in value


def _uncountable(chunk: Any) -> bool:
    """A chunk whose len() fails in the interpreter itself (no len, negative, huge)."""
    if not isinstance(chunk, tuple):
        return False
    return chunk[0] in ("int", "none") or (chunk[0] == "len-lies" and not 0 <= chunk[2] < 2**63)


def _unclosed_generator_with_an_uncountable_chunk(case: Any) -> bool:
    return (
        case.serve == "no-close"
        and case.result[0] == "generator"
        and any(step[0] == "yield" and _uncountable(step[1]) for step in case.result[1])
    )


KNOWN_DIVERGENCES: tuple[Known, ...] = (
    Known(
        "asgi-zerocopy-count-not-a-small-int",
        "issue 13, compiled path 3: the compiled item raises inside the app's send()",
        "asgi",
        _odd_zerocopy_count,
    ),
    Known(
        "asgi-invalid-throw-arguments-into-a-bare-iterator-app",
        "found by the fuzzer: throw(exc, value) while an app's plain iterator (no throw()) is "
        "suspended: the Python path raises the TypeError outside and leaves the request in "
        "flight, unrecorded; the compiled path records it as the app's error",
        "asgi",
        lambda case: case.app_kind == "bare-iterator" and case.on_suspend.startswith("throw-inv"),
    ),
    Known(
        "asgi-stop-iteration-thrown-into-a-bare-iterator-app",
        "issue 13, compiled path 5: throw() handling hard-codes 3.11 (on 3.12+ the Python "
        "path ends the await, the compiled path raises RuntimeError)",
        "asgi",
        lambda case: case.app_kind == "bare-iterator" and case.on_suspend == "throw:StopIteration",
    ),
    Known(
        "wsgi-bad-start-response-call-error-text",
        "issue 13, compiled path 5: different error text for bad start_response calls",
        "wsgi",
        _bad_start_call,
    ),
    Known(
        "wsgi-app-returns-its-start-response",
        "issue 13, compiled path 1: SIGSEGV (response_next recurses through tp_iternext)",
        "wsgi",
        _returns_start_response,
    ),
    Known(
        "wsgi-iter-calls-next-on-start-response",
        "issue 13, compiled path 2: a reference leak, a chunk lost under deep recursion",
        "wsgi",
        _iter_calls_next_on_start_response,
    ),
    Known(
        "wsgi-app-returns-its-write-callable",
        "found by the fuzzer: the server's TypeError names aegis_mw._hotpath.WsgiWriter, "
        "not 'function', and so does the record's error",
        "wsgi",
        lambda case: case.result[0] == "writer",
    ),
    Known(
        "wsgi-generator-exit-from-the-app-while-iterating",
        "issue 13, compiled path 5: recorded as an error (the Python path does not)",
        "wsgi",
        _generator_exit_while_iterating,
    ),
    Known(
        "wsgi-unclosed-generator-finalised-only-by-the-collector",
        "issue 13, compiled path 5: a reference cycle keeps a generator response whose chunk "
        "could not be counted, never closed, until the cyclic GC: its finally runs late",
        "wsgi",
        _unclosed_generator_with_an_uncountable_chunk,
    ),
    Known(
        "wsgi-stop-iteration-from-iter-or-a-chunk-len",
        "issue 13, compiled path 4: the server sees a normal end, a silently truncated body",
        "wsgi",
        _stop_iteration_while_counting,
    ),
    Known(
        "django-stop-iteration-from-a-chunk-len",
        "found by the fuzzer (the class of issue 13, compiled path 4): the Python path's "
        "sum(map(len, _container)) ends early and records the request; the compiled path "
        "counts an internal_error and records nothing",
        "django",
        _django_container_len_raises_stop_iteration,
    ),
)


def known_divergence(kind: str, case: Any) -> str | None:
    """The name of the known divergence ``case`` belongs to, or None."""
    for known in KNOWN_DIVERGENCES:
        if known.kind == kind and known.applies(case):
            return known.name
    return None
