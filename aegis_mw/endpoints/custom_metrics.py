"""``GET {api_path}/custom-metrics``: the app's own metrics now, as JSON.

The figures are those ``/metrics`` shows (every worker's, when several share
the metrics), per label set: a counter's or gauge's ``value``; a histogram's
``count``, ``sum`` and its ``buckets`` (one count per bucket, not cumulative,
the last one +Inf). JSON has no NaN or infinity: such a value is null.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ..core.custom_metrics import MetricSnapshot


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _series(metric: MetricSnapshot, key: tuple[str, ...], value: Any) -> dict[str, Any]:
    labels = dict(zip(metric.labels, key, strict=True))
    if metric.kind != "histogram":
        return {"labels": labels, "value": _finite(value)}
    return {"labels": labels, "count": sum(value[:-1]), "sum": _finite(value[-1]),
            "buckets": value[:-1]}  # fmt: skip


def custom_metrics_answer(metrics: Sequence[MetricSnapshot], name: str | None) -> dict[str, Any]:
    """Every metric, or the one named ``name`` (a counter by its name with or
    without ``_total``; none when it is not declared)."""
    return {
        "metrics": [
            {
                "name": metric.name,
                "kind": metric.kind,
                "help": metric.help,
                "labels": list(metric.labels),
                **({"buckets": list(metric.bounds)} if metric.kind == "histogram" else {}),
                **({"multiprocess_mode": metric.mode} if metric.kind == "gauge" else {}),
                "overflowed": metric.overflowed,
                "series": [
                    _series(metric, key, value) for key, value in sorted(metric.series.items())
                ],
            }
            for metric in metrics
            if name is None
            or name == metric.name
            or (metric.kind == "counter" and name == f"{metric.name}_total")
        ]
    }
