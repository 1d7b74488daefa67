"""Our families as a prometheus-client ``Collector``, for a registry of the app's.

``/metrics`` renders our families itself (several times faster); this adapter
is for apps that expose their own registry, push to a gateway, or want our
series next to theirs through prometheus-client::

    registry.register(AegisCollector(aegis))
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

from .families import FamilyBuilder, MetricsReading

_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
_UNESCAPE = re.compile(r"\\(.)")


def _unescape(value: str) -> str:
    return _UNESCAPE.sub(lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


def parse_label_text(text: str) -> dict[str, str]:
    """The labels of a text made by :func:`aegis_mw.exposition.text.label_text`."""
    return {name: _unescape(value) for name, value in _LABEL.findall(text)}


class AegisCollector:
    """Yields prometheus-client ``Metric`` families built from the pipeline."""

    def __init__(self, reader: Callable[[], MetricsReading], builder: FamilyBuilder) -> None:
        self._reader = reader
        self._builder = builder

    def collect(self) -> Iterator[Any]:
        from prometheus_client.metrics_core import Metric
        from prometheus_client.samples import Exemplar

        for family in self._builder.build(self._reader()):
            metric = Metric(family.name, family.help, family.kind)
            exemplars = family.exemplars
            for index, (suffix, labels, value) in enumerate(family.samples):
                mark = exemplars.get(index)
                metric.add_sample(
                    family.name + suffix,
                    parse_label_text(labels),
                    value,
                    exemplar=None
                    if mark is None
                    else Exemplar(
                        {"trace_id": mark[0]}
                        if mark[1] is None
                        else {"trace_id": mark[0], "span_id": mark[1]},
                        mark[2],
                        mark[3],
                    ),
                )
            yield metric

    def describe(self) -> list[Any]:
        # No description: registering does not call collect() (which takes the
        # flusher's lock) and names are checked against the registry at scrape.
        return []
