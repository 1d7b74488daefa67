"""Rendering metric families as Prometheus text (0.0.4) or OpenMetrics text.

prometheus-client's ``generate_latest`` builds a sample object and formats and
sorts its labels for every line; a scrape of a few thousand series then costs
tens of milliseconds. Here a family holds its samples with the label text
already escaped (label sets repeat from scrape to scrape, so their text is
cached by the builder), and rendering is string concatenation. The output is
checked against prometheus-client's own parsers and ``promtool check metrics``
in the tests.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from ..core.exemplars import Exemplar

TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"


@dataclass(slots=True)
class Family:
    """One metric family. ``name`` is the OpenMetrics family name (a counter's
    without ``_total``); ``samples`` are ``(suffix, label_text, value)`` with
    the label text escaped already (see :func:`label_text`). ``exemplars``
    maps a sample's index to its exemplar, shown in OpenMetrics only."""

    name: str
    kind: str  # counter, gauge, histogram or summary
    help: str
    samples: list[tuple[str, str, float | int]] = field(default_factory=list)
    exemplars: dict[int, Exemplar] = field(default_factory=dict)


def escape_label_value(value: str) -> str:
    """The exposition formats' escaping of a label value: backslash, quote, newline."""
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


def escape_help(text: str, *, openmetrics: bool) -> str:
    """A HELP text escaped for its format: backslash and newline in both, and the
    double quote too in OpenMetrics (where it is not a plain character)."""
    text = text.replace("\\", "\\\\").replace("\n", "\\n")
    return text.replace('"', '\\"') if openmetrics else text


def label_text(pairs: Iterable[tuple[str, str]]) -> str:
    """``name="value",...`` for label names that are valid already (ours are)."""
    return ",".join(f'{name}="{escape_label_value(value)}"' for name, value in pairs)


def number(value: float | int) -> str:
    """A sample value as Prometheus writes it: integers plainly, +Inf/-Inf/NaN."""
    if type(value) is int:
        return str(value)
    if value == math.inf:
        return "+Inf"
    if value == -math.inf:
        return "-Inf"
    if value != value:
        return "NaN"
    return repr(float(value))


def exemplar_text(exemplar: Exemplar) -> str:
    """An exemplar as OpenMetrics writes it after its sample's value (ids are
    hex digits, so they need no escaping)."""
    trace_id, span_id, value, timestamp = exemplar
    labels = (
        f'trace_id="{trace_id}"'
        if span_id is None
        else (f'trace_id="{trace_id}",span_id="{span_id}"')
    )
    return f" # {{{labels}}} {number(value)} {number(float(timestamp))}"


def render(families: Sequence[Family], *, openmetrics: bool) -> str:
    """The text exposition of ``families``; OpenMetrics ends with ``# EOF``."""
    out: list[str] = []
    append = out.append
    for family in families:
        name = family.name
        # In the 0.0.4 format a counter's TYPE line names the _total series.
        typed = name if openmetrics or family.kind != "counter" else name + "_total"
        help_text = escape_help(family.help, openmetrics=openmetrics)
        append(f"# HELP {typed} {help_text}\n# TYPE {typed} {family.kind}\n")
        if openmetrics and family.exemplars:
            _render_with_exemplars(family, append)
            continue
        for suffix, labels, value in family.samples:
            text = str(value) if type(value) is int else number(value)
            if labels:
                append(f"{name}{suffix}{{{labels}}} {text}\n")
            else:
                append(f"{name}{suffix} {text}\n")
    if openmetrics:
        append("# EOF\n")
    return "".join(out)


def _render_with_exemplars(family: Family, append: Callable[[str], None]) -> None:
    name, exemplars = family.name, family.exemplars
    for index, (suffix, labels, value) in enumerate(family.samples):
        text = str(value) if type(value) is int else number(value)
        exemplar = exemplars.get(index)
        tail = "\n" if exemplar is None else exemplar_text(exemplar) + "\n"
        if labels:
            append(f"{name}{suffix}{{{labels}}} {text}{tail}")
        else:
            append(f"{name}{suffix} {text}{tail}")
