"""What a health check is, and what its run gives.

A check is any callable, sync or async, or an object with a ``check()``
method (sync or async). What it returns decides its status:

- ``None`` or ``True``: pass; ``False``: fail;
- a ``dict``: pass, the dict shown as the check's details;
- a :class:`CheckOutcome`: its own status (``warn`` for degraded), message
  and details;
- raising: fail, with ``"ExceptionType: message"``.

A check that does not answer within its timeout is ``unknown``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

PASS, WARN, FAIL, UNKNOWN = "pass", "warn", "fail", "unknown"
STATUSES = (PASS, WARN, FAIL, UNKNOWN)


@dataclass(frozen=True)
class CheckOutcome:
    """What a check may return to say more than pass or fail::

    return CheckOutcome("warn", "replica lag 12 s", {"lag_seconds": 12})
    """

    status: str
    message: str = ""
    details: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in (PASS, WARN, FAIL):
            raise ValueError(f"a check's status is 'pass', 'warn' or 'fail', not {self.status!r}")


@dataclass(frozen=True)
class HealthCheck:
    """A named check. ``critical``: when it fails (or times out) the service is
    down (readiness 503); when a non-critical one does, the service is degraded
    (still ready, status ``warn``)."""

    name: str
    check: Any
    timeout: float = 2.0
    critical: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError("a health check needs a name")
        if not callable(self.check) and not callable(getattr(self.check, "check", None)):
            raise TypeError(f"health check {self.name!r}: not callable and has no check() method")
        if isinstance(self.timeout, bool) or not isinstance(self.timeout, (int, float)):
            raise TypeError(f"health check {self.name!r}: timeout must be a number of seconds")
        if not 0 < self.timeout <= 300:
            raise ValueError(f"health check {self.name!r}: timeout must be > 0 and <= 300 s")
        _refuse_unresolved_dependencies(self.name, self.function)

    @property
    def function(self) -> Callable[[], Any]:
        """The callable to run: the object's ``check`` method, or the object."""
        method = getattr(self.check, "check", None)
        chosen: Callable[[], Any] = (
            method if callable(method) and not inspect.isfunction(self.check) else self.check
        )
        return chosen

    @property
    def is_async(self) -> bool:
        function = self.function
        return inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(
            getattr(function, "__call__", None)  # noqa: B004 (objects with async __call__)
        )


def _refuse_unresolved_dependencies(name: str, function: Any) -> None:
    """A check asking for FastAPI dependencies (``Depends(...)``) would be called
    with none: refused at registration, pointing to what resolves them."""
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):  # a builtin or an object without one
        return
    for parameter in parameters:
        annotation = parameter.annotation
        markers = [parameter.default, *getattr(annotation, "__metadata__", ())]
        textual = isinstance(annotation, str) and (
            "Depends(" in annotation or "Security(" in annotation
        )
        if textual or any(type(marker).__module__ == "fastapi.params" for marker in markers):
            raise TypeError(
                f"health check {name!r}: parameter {parameter.name!r} is a FastAPI "
                "dependency, which nothing resolves here; wrap the check with "
                "aegis_mw.contrib.fastapi.dependency_check(app, function)"
            )


@dataclass(frozen=True)
class CheckResult:
    """One run of one check."""

    name: str
    status: str
    message: str
    duration_ms: float
    critical: bool
    details: Mapping[str, Any]
    checked_at: float  # wall clock, seconds since the epoch

    def to_json(self) -> dict[str, Any]:
        from ..core.record import isoformat

        status = self.status
        if status == UNKNOWN:  # the draft has pass/warn/fail only
            status = FAIL if self.critical else WARN
        entry: dict[str, Any] = {
            "status": status,
            "outcome": self.status,
            "critical": self.critical,
            "durationMs": round(self.duration_ms, 3),
            "time": isoformat(self.checked_at),
        }
        if self.message:
            entry["output"] = self.message
        if self.details:
            entry["details"] = dict(self.details)
        return entry


def interpret(value: Any) -> tuple[str, str, Mapping[str, Any]]:
    """A check's return value as (status, message, details)."""
    if value is None or value is True:
        return PASS, "", {}
    if value is False:
        return FAIL, "check returned False", {}
    if isinstance(value, CheckOutcome):
        return value.status, value.message, value.details
    if isinstance(value, Mapping):
        return PASS, "", value
    return PASS, "", {"value": repr(value)[:200]}


def json_safe(value: Any, depth: int = 0) -> Any:
    """``value`` as plain JSON data: mappings with text keys, lists, text, finite
    numbers, booleans and null; anything else as its (shortened) repr."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if depth < 8:
        if isinstance(value, Mapping):
            return {str(key): json_safe(item, depth + 1) for key, item in value.items()}
        if isinstance(value, (list, tuple, set, frozenset)):
            return [json_safe(item, depth + 1) for item in value]
    try:
        return repr(value)[:200]
    except Exception:
        return f"<{type(value).__qualname__}>"
