"""Grouping of alert notices, with Alertmanager's names and defaults.

Each channel groups the notices it gets by the labels of its ``group_by``
(default ``["alertname"]``: every route of one rule together) and sends a
group as one notification, Alertmanager's ``group_wait``,
``group_interval`` and ``repeat_interval`` deciding when:

- a notice of a group that has had nothing delivered for ``group_interval``
  waits ``group_wait`` (30 s), for the rest of the group to arrive (50
  routes breaching at once are one notification, not 50);
- a notice of a group delivered to less than ``group_interval`` (5 min) ago
  waits until that much time has passed since, and joins whatever else is
  due for the group by then;
- an alert still firing is notified again after ``repeat_interval`` (4 h)
  without another notice.

``group_by = ["..."]`` sends every alert on its own (PagerDuty channels
always do: an incident per alert episode). The outbox keeps one row per
alert and channel (see :mod:`.outbox`); this module says which group a row
is in, and makes one payload of a group's rows.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..core.errors import ConfigError
from .rules import parse_duration

#: group_by's value for "every alert alone", as Alertmanager spells it.
EVERY_ALERT = "..."
_LABEL = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
#: The longest timer: a week.
MAX_TIMER = 7 * 86_400.0


@dataclass(frozen=True)
class Grouping:
    """How one channel groups its notices, and when it sends them."""

    group_by: tuple[str, ...] = ("alertname",)
    group_wait: float = 30.0
    group_interval: float = 300.0
    repeat_interval: float = 4 * 3600.0

    def key(self, labels: Mapping[str, str]) -> str:
        """The group of an alert with these labels ('' is no group: it goes
        alone)."""
        if EVERY_ALERT in self.group_by:
            return ""
        return json.dumps([[name, labels.get(name, "")] for name in self.group_by])


#: The default: by rule, with Alertmanager's timers.
BY_RULE = Grouping()
#: Every alert alone, sent as soon as it is due (PagerDuty's).
ALONE = Grouping(group_by=(EVERY_ALERT,), group_wait=0.0, group_interval=0.0)
GROUPING_KEYS = ("group_by", "group_wait", "group_interval", "repeat_interval")


def grouping_from_settings(
    where: str, settings: Mapping[str, Any], base: Grouping = Grouping()
) -> Grouping:
    """A channel's grouping from its settings (``group_by``, ``group_wait``,
    ``group_interval``, ``repeat_interval``), checked."""
    group_by = settings.get("group_by", list(base.group_by))
    if (
        isinstance(group_by, str)
        or not isinstance(group_by, (list, tuple))
        or not all(
            isinstance(g, str) and (g == EVERY_ALERT or _LABEL.fullmatch(g)) for g in group_by
        )
        or len(set(group_by)) != len(group_by)
    ):
        raise ConfigError(
            f"{where}.group_by", group_by,
            f"a list of label names, each once (or [{EVERY_ALERT!r}]: every alert alone)",
        )  # fmt: skip
    if EVERY_ALERT in group_by and len(group_by) > 1:
        raise ConfigError(f"{where}.group_by", group_by, f"{EVERY_ALERT!r} alone")
    timers = {}
    for name in GROUPING_KEYS[1:]:
        value = settings.get(name, getattr(base, name))
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            raise ConfigError(f"{where}.{name}", value, str(exc)) from None
        if seconds > MAX_TIMER:
            raise ConfigError(f"{where}.{name}", value, "at most a week")
        timers[name] = seconds
    if timers["repeat_interval"] <= 0:
        raise ConfigError(f"{where}.repeat_interval", settings.get("repeat_interval"), "> 0")
    return Grouping(tuple(group_by), **timers)


def notification_key(keys: Sequence[str]) -> str:
    """The idempotency key of a notification: its one notice's key, or a
    digest of its notices' keys (the same rows give the same key on a retry)."""
    if len(keys) == 1:
        return keys[0]
    digest = hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()[:32]
    return f"group.{digest}"


def group_payload(payloads: Sequence[Mapping[str, Any]], group_key: str) -> dict[str, Any]:
    """One notification of several notices, in the shape of Alertmanager's
    webhook: ``status`` firing while any alert fires, every alert with our
    notice's details under its own ``aegis``, the labels and annotations all
    share as ``commonLabels``/``commonAnnotations``. One notice is sent as it is."""
    if len(payloads) == 1:
        return dict(payloads[0])
    alerts = []
    for payload in payloads:
        for alert in payload.get("alerts") or []:
            alerts.append({**alert, "aegis": payload.get("aegis", {})})
    firing = [a for a in alerts if a.get("status") == "firing"]
    return {
        "version": "4",
        "status": "firing" if firing else "resolved",
        "groupKey": group_key,
        "groupLabels": {str(name): str(value) for name, value in json.loads(group_key or "[]")},
        "commonLabels": _common([a.get("labels") or {} for a in alerts]),
        "commonAnnotations": _common([a.get("annotations") or {} for a in alerts]),
        "externalURL": "",
        "alerts": alerts,
        "truncatedAlerts": 0,
        "aegis": {"kind": "group", "firing": len(firing), "resolved": len(alerts) - len(firing)},
    }


def _common(mappings: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    if not mappings:
        return {}
    common = dict(mappings[0])
    for other in mappings[1:]:
        common = {k: v for k, v in common.items() if other.get(k) == v}
    return common
