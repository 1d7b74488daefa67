"""Outcomes made comparable: plain, picklable values that keep every type
difference a server or a record could see (``200`` vs ``200.0`` vs
``HTTPStatus.OK``, ``bytes`` vs ``bytearray``), and no memory address."""

from __future__ import annotations

import dataclasses
import re
import warnings
from typing import Any

from aegis_mw import Aegis
from aegis_mw.testing import FakeClock
from tests.harness import SAME_BUILD

_ADDRESS = re.compile(r" at 0x[0-9a-f]+")
#: The callables the app is handed as ``start_response`` and ``write`` are
#: functions on the Python path and objects of these types on the compiled one
#: (PEP 3333 asks only for callables). An app that misuses one (returns it as
#: its body, say) gets the interpreter's TypeError naming the type: that name,
#: and nothing else, is the same on both paths once read as the function's.
_CALLABLE_TYPES = re.compile(r"'aegis_mw\._hotpath\.(?:StartResponse|Writer)'")


def normal(value: Any, depth: int = 0) -> Any:
    """``value`` as nested tuples of plain values; the type shows wherever it is
    not the obvious one."""
    kind = type(value)
    if kind is str:
        return _CALLABLE_TYPES.sub("'function'", value)
    if value is None or kind in (bool, int, bytes):
        return value
    if depth > 8:
        return ("deep", kind.__qualname__)
    if kind is float:
        return ("float", repr(value))  # NaN equals itself here
    if kind in (list, tuple):
        return (kind.__name__, *(normal(each, depth + 1) for each in value))
    if kind is dict:
        return ("dict", *((normal(k, depth + 1), normal(v, depth + 1)) for k, v in value.items()))
    if isinstance(value, BaseException):
        return ("exception", kind.__qualname__, _text(value))
    if isinstance(value, int):  # bool is handled above; HTTPStatus, IntEnum, int subclasses
        return (kind.__qualname__, int(value))
    if isinstance(value, (bytes, bytearray)):
        return (kind.__qualname__, bytes(value))
    if isinstance(value, memoryview):
        try:
            return ("memoryview", value.tobytes())
        except ValueError:  # released
            return ("memoryview", "released")
    if hasattr(value, "_asdict"):  # a named tuple: a record
        return (kind.__qualname__, normal(value._asdict(), depth + 1))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        return (kind.__qualname__, normal(fields, depth + 1))
    if hasattr(type(value), "__len__") and hasattr(type(value), "__getitem__"):
        try:  # the compiled inbox item, a MappingProxyType...
            inner = dict(value.items()) if hasattr(value, "items") else list(value)
            return (kind.__qualname__, normal(inner, depth + 1))
        except Exception as exc:
            return (kind.__qualname__, "unreadable", type(exc).__qualname__)
    return ("object", kind.__qualname__)


def _text(value: Any) -> str:
    try:
        return _CALLABLE_TYPES.sub("'function'", _ADDRESS.sub("", str(value)))
    except Exception as exc:  # an exception whose str() raises
        return f"<str() raised {type(exc).__qualname__}>"


def raised(exc: BaseException | None, own: list[BaseException]) -> Any:
    """What reached the caller: type, text, and whether it is the very object the
    app (or the server) raised."""
    if exc is None:
        return None
    return (type(exc).__qualname__, _text(exc), any(exc is each for each in own))


def fresh_pipeline(clock: FakeClock, compiled: bool, **options: Any) -> Aegis:
    """A pipeline of its own for one path of one case: memory sink, fake clock,
    no flush until asked."""
    aegis = Aegis(
        sink="memory://", environ={}, clock=clock, speedups=compiled, metrics_registry="none",
        flush_interval=3600, **options,
    )  # fmt: skip
    aegis.hot_path = SAME_BUILD  # aegis_build_info names the path: set alike on both
    return aegis


def pipeline_figures(aegis: Aegis) -> dict[str, Any]:
    """What the pipeline holds after a case: the inbox items as queued, then,
    flushed, the records, realtime figures and drops. Shuts it down."""
    items = [normal(list(item)) for item in aegis.recorder.inbox]
    flushed = aegis.force_flush(10)
    figures = {
        "inbox items": items,
        "flushed": flushed,
        "records": [normal(r._replace(request_id="")) for r in aegis.sinks[0].requests],
        "realtime": normal(aegis.realtime()),
        "dropped": normal(dict(aegis.stats().dropped)),
    }
    aegis.shutdown(timeout=5)
    return figures


def warnings_of(caught: list[warnings.WarningMessage]) -> list[str]:
    return sorted(f"{w.category.__name__}: {w.message}" for w in caught)
