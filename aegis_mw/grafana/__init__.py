"""Grafana dashboards and Prometheus recording rules over what aegis_mw exports.

Three files ship in this package, printed by ``aegis-mw export``:

- ``prometheus-dashboard.json``: a Grafana dashboard over the series of
  ``/metrics`` (its queries compute from the raw series, so it works without
  the recording rules);
- ``postgresql-dashboard.json``: a Grafana dashboard over the history a
  ``postgresql://`` sink stores (rollups, request log, sessions, events);
- ``recording-rules.yml``: Prometheus recording rules for the dashboard's
  heavier queries (per-route rates and latency percentiles over 5 minutes),
  for alerts, long ranges and federation.

They are files, not code, so that they read as Grafana and Prometheus show
them; the Prometheus ones name the series under the default ``aegis``
namespace, and :func:`with_namespace` renames them for an app that sets
``metrics_namespace``::

    from aegis_mw.grafana import exported
    text = exported("prometheus-dashboard", namespace="shop_api")
"""

from __future__ import annotations

import re
from importlib import resources

#: What can be exported -> its file in this package.
FILES = {
    "prometheus-dashboard": "prometheus-dashboard.json",
    "postgresql-dashboard": "postgresql-dashboard.json",
    "recording-rules": "recording-rules.yml",
}
#: The exports that name our Prometheus series (the PostgreSQL tables keep
#: their names whatever the namespace).
NAMESPACED = frozenset({"prometheus-dashboard", "recording-rules"})
DEFAULT_NAMESPACE = "aegis"

_NAMESPACE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
# A series name's prefix: "aegis_" at the start of a word, but not the
# package's own name (aegis_mw) in titles and comments.
_PREFIX = re.compile(r"\baegis_(?!mw\b)")


def exported(name: str, namespace: str = DEFAULT_NAMESPACE) -> str:
    """The text of one export (a key of :data:`FILES`), its series renamed
    for ``namespace``. ``ValueError`` for an unknown name or namespace, or a
    namespace given for the PostgreSQL dashboard."""
    if name not in FILES:
        raise ValueError(f"unknown export {name!r}; one of {', '.join(sorted(FILES))}")
    text = resources.files(__name__).joinpath(FILES[name]).read_text(encoding="utf-8")
    if namespace == DEFAULT_NAMESPACE:
        return text
    if name not in NAMESPACED:
        raise ValueError(f"{name} reads database tables: it has no metric namespace")
    return with_namespace(text, namespace)


def with_namespace(text: str, namespace: str) -> str:
    """``text`` with every ``aegis_`` series name under ``namespace`` instead
    (``metrics_namespace``: a metric name prefix such as ``shop_api``)."""
    if not _NAMESPACE.fullmatch(namespace):
        raise ValueError(
            f"namespace {namespace!r} is not a metric name prefix such as 'aegis' or 'shop_api'"
        )
    return _PREFIX.sub(f"{namespace}_", text)
