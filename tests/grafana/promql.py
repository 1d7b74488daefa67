"""What Grafana does to a Prometheus dashboard's queries before Prometheus sees
them, and asking a real Prometheus.

Grafana replaces its own interval variables (``$__rate_interval``,
``$__range``) with durations, and the dashboard's variables with their
values: a variable that allows several values or "All" gets each value
regex-escaped inside the PromQL string (Grafana's ``prometheusRegularEscape``)
and several joined as ``(a|b)``; "All" is the variable's custom all value when
it has one, else every value joined. A ``label_values(selector, label)``
variable lists the label's values among the series the selector matches.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httpx
import pytest

TIMEOUT = 10.0
_LABEL_VALUES = re.compile(r"^label_values\((.*),\s*([a-zA-Z_][a-zA-Z0-9_]*)\)$", re.DOTALL)
_VARIABLE = re.compile(r"\$(?:\{([a-zA-Z_][a-zA-Z0-9_]*)\}|([a-zA-Z_][a-zA-Z0-9_]*))")

Result = list[dict[str, Any]]


def regex_escaped(value: str) -> str:
    """A value as Grafana writes it into a PromQL regex matcher: regex
    metacharacters escaped, each backslash doubled for the string literal."""
    value = value.replace("\\", "\\\\\\\\")
    return re.sub(r"[$^*{}\[\]'+?.()|]", lambda match: "\\\\" + match.group(), value)


def selection(values: Sequence[str]) -> str:
    """A multi-value variable's selected values, as Grafana writes them."""
    escaped = [regex_escaped(value) for value in values]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def all_of(variable: Mapping[str, Any], values: Sequence[str]) -> str:
    """The variable set to "All"."""
    custom = variable.get("allValue")
    return str(custom) if custom else selection(values)


def interpolated(expr: str, variables: Mapping[str, str], rate_interval: str, range_: str) -> str:
    """``expr`` as Grafana sends it, with the dashboard's variables set to ``variables``."""
    text = expr.replace("$__rate_interval", rate_interval).replace("$__range", range_)

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in variables:
            raise AssertionError(f"${name} in {expr!r} is not a variable of the dashboard")
        return variables[name]

    return _VARIABLE.sub(value, text)


def label_values(url: str, query: str, variables: Mapping[str, str]) -> list[str]:
    """The values of a ``label_values(selector, label)`` variable, as Grafana asks for them."""
    match = _LABEL_VALUES.match(query.strip())
    assert match, f"not a label_values() query: {query!r}"
    selector = interpolated(match.group(1), variables, "1m", "1m")
    response = httpx.get(
        f"{url}/api/v1/label/{match.group(2)}/values",
        params={"match[]": selector, "start": time.time() - 3600},
        timeout=TIMEOUT,
    )
    body = response.json()
    assert response.status_code == 200 and body["status"] == "success", (selector, body)
    return sorted(body["data"])


def instant(url: str, expr: str) -> Result:
    """An instant query's result; the query must parse and run."""
    response = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=TIMEOUT)
    body = response.json()
    assert response.status_code == 200 and body["status"] == "success", (expr, body)
    result: Result = body["data"]["result"]
    return result


def has_a_number(result: Result) -> bool:
    """At least one series, and a finite value in one (a rate of 0 over 0 is NaN)."""
    return any(math.isfinite(float(series["value"][1])) for series in result)


def until(url: str, expr: str, check: Callable[[Result], bool], seconds: float) -> Result:
    """Ask until the answer passes ``check`` (Prometheus scrapes and evaluates
    rules on its own schedule; each try is a round trip, not a sleep), or fail
    after ``seconds`` with the last answer."""
    deadline = time.monotonic() + seconds
    while True:
        result = instant(url, expr)
        if check(result):
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"{expr}\nnever passed; the last answer: {result}")


def up(url: str) -> bool:
    """Whether Prometheus answers queries yet."""
    try:
        return httpx.get(f"{url}/-/ready", timeout=TIMEOUT).status_code == 200
    except httpx.TransportError:
        return False
