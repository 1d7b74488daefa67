"""Who is not told: silences, mute windows and inhibition, as Alertmanager has them.

Pure policy: nothing here reads a clock, a file or a setting; ``now`` is
always given (seconds since the epoch, UTC). The notification path asks
:meth:`NotificationPolicy.why_muted` for each notice and holds it back when
it gets a reason.

- A :class:`Silence` mutes the alerts its matchers match from ``starts_at``
  until (not including) ``ends_at``.
- A :class:`MuteWindow` (Alertmanager's ``time_intervals``) mutes during
  recurring local times: minutes of the day, weekdays, days of the month,
  months and years, in an IANA time zone. Wall-clock times follow the zone's
  daylight saving: on a spring-forward day a window inside the skipped hour
  never matches, and on a fall-back day the repeated hour matches twice.
- An :class:`InhibitRule` mutes target alerts while a firing source alert
  with the same values of the ``equal`` labels exists (a critical alert
  hiding the warnings of the same route, say).

Every object is checked when it is made; a bad field raises
:class:`~.matchers.PolicyError` naming it, its value and what is allowed.
"""

from __future__ import annotations

import calendar
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .matchers import _LABEL_NAME, Matcher, PolicyError, matcher_from_text, matches

T = TypeVar("T")

PENDING, ACTIVE, EXPIRED = "pending", "active", "expired"
#: Silence ids and window names: safe in a URL path.
_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
_ID_ALLOWED = "1 to 128 letters, digits, '_', '.', ':' or '-'"
CREATED_BY_LIMIT = 256
COMMENT_LIMIT = 2048
_RFC3339 = re.compile(
    r"(\d{4}-\d\d-\d\d)[Tt ](\d\d:\d\d:\d\d)(\.\d{1,9})?([Zz]|[+-]\d\d:\d\d)"
)  # fmt: skip
_TIME_ALLOWED = "seconds since the epoch, or RFC 3339 text with an offset (2026-03-29T01:30:00Z)"


def parse_time(value: Any) -> float:
    """Seconds since the epoch from a number of them or RFC 3339 text with
    an offset (``2026-03-29T01:30:00+01:00``); raises ValueError otherwise."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value) if abs(value) < 1e300 else math.inf
    elif isinstance(value, str) and (form := _RFC3339.fullmatch(value.strip())):
        day, clock, fraction, offset = form.groups()
        offset = "+00:00" if offset in "Zz" else offset
        try:  # fromisoformat: Python 3.10 reads neither 'Z' nor 9 digits of fraction
            moment = datetime.fromisoformat(f"{day}T{clock}{offset}")
        except ValueError:
            raise ValueError(f"{_TIME_ALLOWED}; this is no real date and time") from None
        seconds = moment.timestamp() + float(fraction or 0)
    else:
        raise ValueError(_TIME_ALLOWED)
    if not math.isfinite(seconds):
        raise ValueError(_TIME_ALLOWED)
    return seconds


def _check_id(what: str, key: str, value: Any) -> None:
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise PolicyError(what, key, value, _ID_ALLOWED)


def _matchers(what: str, key: str, value: Any) -> tuple[Matcher, ...]:
    """Matchers, or their text forms, as a tuple; at least one."""
    if isinstance(value, (str, Mapping)) or not isinstance(value, Iterable):
        raise PolicyError(what, key, value, "a list of matchers such as ['severity=\"critical\"']")
    out = []
    for index, item in enumerate(value):
        try:
            out.append(item if isinstance(item, Matcher) else matcher_from_text(item))
        except PolicyError as exc:
            raise PolicyError(what, f"{key}[{index}]", item, exc.allowed) from None
    if not out:
        raise PolicyError(what, key, value, "at least one matcher")
    return tuple(out)


def _from_mapping(
    make: Callable[..., T], data: Any, names: tuple[str, ...], required: tuple[str, ...],
    kind: str, key: str, where: str,
) -> T:  # fmt: skip
    """``make(**data)`` with unknown and missing keys refused by name, and
    errors naming ``where`` (a settings file's ``silences[2]``) when given."""
    label = f"{kind} {data.get(key)!r}" if isinstance(data, Mapping) and key else kind
    label = f"{label} ({where})" if where else label
    if not isinstance(data, Mapping):
        raise PolicyError(label, f"({kind})", data, f"a mapping of {', '.join(names)}")
    unknown = sorted(str(k) for k in data if k not in names)
    if unknown:
        raise PolicyError(label, unknown[0], data[unknown[0]], f"one of {', '.join(names)}")
    missing = [k for k in required if k not in data]
    if missing:
        raise PolicyError(label, missing[0], None, "required")
    try:
        return make(**{k: v for k, v in data.items() if v is not None or k in required})
    except PolicyError as exc:
        raise PolicyError(label, exc.field, exc.value, exc.allowed) from None


# -- silences -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Silence:
    """Mutes the alerts all its matchers match, from ``starts_at`` until
    (not including) ``ends_at``, seconds since the epoch.

    Example::

        Silence("deploy-42", [matcher_from_text('route="/checkout"')],
                starts_at=now, ends_at=now + 3600, created_by="ana",
                comment="deploying the new checkout")

    ``matchers`` may also be given as text forms. At least one of them must
    not match the empty string: a silence of every alert is refused, as
    Alertmanager refuses it.
    """

    id: str
    matchers: tuple[Matcher, ...]
    starts_at: float
    ends_at: float
    created_by: str
    comment: str

    def __post_init__(self) -> None:
        what = f"silence {self.id!r}"
        _check_id(what, "id", self.id)
        matchers = _matchers(what, "matchers", self.matchers)
        if all(m.matches("") for m in matchers):
            raise PolicyError(
                what, "matchers", [str(m) for m in matchers],
                "at least one matcher that does not match the empty string (a missing label): "
                "a silence must not match every alert",
            )  # fmt: skip
        for key in ("starts_at", "ends_at"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise PolicyError(what, key, value, "seconds since the epoch")
            if not abs(value) < 1e300:  # also NaN, and integers no float holds
                raise PolicyError(what, key, value, "a finite number of seconds since the epoch")
        if self.ends_at <= self.starts_at:
            raise PolicyError(what, "ends_at", self.ends_at, f"after starts_at ({self.starts_at})")
        for key, limit in (("created_by", CREATED_BY_LIMIT), ("comment", COMMENT_LIMIT)):
            text = getattr(self, key)
            if not isinstance(text, str) or not text.strip() or len(text) > limit:
                raise PolicyError(
                    what, key, text, f"a non-blank text of at most {limit} characters"
                )
        object.__setattr__(self, "matchers", matchers)
        object.__setattr__(self, "starts_at", float(self.starts_at))
        object.__setattr__(self, "ends_at", float(self.ends_at))

    def state(self, now: float) -> str:
        """``pending`` before ``starts_at``, ``active`` until ``ends_at``, then ``expired``."""
        if now < self.starts_at:
            return PENDING
        return ACTIVE if now < self.ends_at else EXPIRED

    def active(self, now: float) -> bool:
        return self.starts_at <= now < self.ends_at

    def to_mapping(self) -> dict[str, Any]:
        """The silence as :func:`silence_from_mapping` takes it (matchers as text)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["matchers"] = [str(m) for m in self.matchers]
        return out


_SILENCE_KEYS = tuple(f.name for f in fields(Silence))


def silence_from_mapping(data: Any, where: str = "") -> Silence:
    """A :class:`Silence` from a mapping (an API body, a settings file): the
    field names, matchers as text forms, times as seconds since the epoch or
    RFC 3339 text with an offset."""
    if isinstance(data, Mapping):
        data = dict(data)
        for key in ("starts_at", "ends_at"):
            if key in data:
                try:
                    data[key] = parse_time(data[key])
                except ValueError as exc:
                    label = f"silence {data.get('id')!r}" + (f" ({where})" if where else "")
                    raise PolicyError(label, key, data[key], str(exc)) from None
    return _from_mapping(Silence, data, _SILENCE_KEYS, _SILENCE_KEYS, "silence", "id", where)


def silenced_by(silences: Iterable[Silence], labels: Mapping[str, str], now: float) -> list[str]:
    """The ids of the silences active at ``now`` that match the labels."""
    return [s.id for s in silences if s.active(now) and matches(s.matchers, labels)]


# -- mute windows -------------------------------------------------------------------------

#: Sunday first, as Go's time.Weekday (and so Alertmanager's ranges) counts.
_WEEKDAYS = ("sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday")
# Not calendar.month_name: that follows the locale.
_MONTHS = (
    "january", "february", "march", "april", "may", "june",
    "july", "august", "september", "october", "november", "december",
)  # fmt: skip
_CLOCK = re.compile(r"(?:([01]\d|2[0-3]):([0-5]\d))|24:00")
_INTEGER = re.compile(r"[+-]?\d{1,4}")
_RANGE_ALLOWED = {
    "weekdays": "weekday names or ranges such as 'monday:friday', counted from Sunday "
    "('saturday:sunday' is two entries: 'saturday', 'sunday')",
    "days_of_month": "days 1 to 31, or -31 to -1 counted back from the month's last day, or "
    "ranges such as '1:7', '-7:-1' or '1:-1' (a negative start needs a negative end), "
    "the start not after the end",
    "months": "month names or numbers 1 to 12, or ranges such as 'january:march', "
    "the start not after the end",
    "years": "years 1 to 9999 or ranges such as '2026:2027', the start not after the end",
}
_TIMES_ALLOWED = "(start, end) pairs of 'HH:MM' from 00:00 to 24:00, the start before the end"
_LOCATION_ALLOWED = (
    "an IANA time zone such as 'Europe/Berlin' or 'UTC' ('Local' is not taken: name the zone)"
)

Span = tuple[int, int]


def _member(key: str, text: str) -> int:
    """One end of a range as a number (weekdays Sunday-first from 0)."""
    if key == "weekdays":
        return _WEEKDAYS.index(text) if text in _WEEKDAYS else -99
    if key == "months" and text in _MONTHS:
        return _MONTHS.index(text) + 1
    return int(text) if _INTEGER.fullmatch(text) else -99


def _spans(what: str, key: str, value: Any) -> tuple[tuple[str, ...], tuple[Span, ...]]:
    """Range texts, normalised, and their (begin, end) spans."""
    if isinstance(value, (str, Mapping)) or not isinstance(value, Iterable):
        raise PolicyError(what, key, value, f"a list of {_RANGE_ALLOWED[key]}")
    texts, spans = [], []
    low, high = {"weekdays": (0, 6), "days_of_month": (-31, 31), "months": (1, 12)}.get(
        key, (1, 9999)
    )
    for item in value:
        text = str(item).lower() if isinstance(item, (str, int)) else ""
        parts = text.split(":")
        begin, end = _member(key, parts[0]), _member(key, parts[-1])
        # A negative day counts back: checked as in a 28-day month (Alertmanager).
        span_ok = (begin + 28 * (begin < 0)) <= (end + 28 * (end < 0))
        if (
            isinstance(item, bool) or not text or len(parts) > 2
            or not (low <= begin <= high and low <= end <= high and span_ok)
            or (key == "days_of_month" and (0 in (begin, end) or (begin < 0 < end)))
        ):  # fmt: skip
            raise PolicyError(what, key, item, _RANGE_ALLOWED[key])
        texts.append(text)
        spans.append((begin, end))
    return tuple(texts), tuple(spans)


def _minutes(what: str, value: Any) -> tuple[tuple[tuple[str, str], ...], tuple[Span, ...]]:
    if isinstance(value, (str, Mapping)) or not isinstance(value, Iterable):
        raise PolicyError(what, "times", value, _TIMES_ALLOWED)
    pairs, spans = [], []
    for item in value:
        pair = item
        if isinstance(item, Mapping) and set(item) == {"start_time", "end_time"}:
            pair = (item["start_time"], item["end_time"])  # Alertmanager's form
        clocks = [
            _CLOCK.fullmatch(p) if isinstance(p, str) else None
            for p in (pair if isinstance(pair, (list, tuple)) and len(pair) == 2 else ())
        ]
        minutes = [int(c[1] or 24) * 60 + int(c[2] or 0) for c in clocks if c]
        if len(minutes) != 2 or minutes[0] >= minutes[1]:
            raise PolicyError(what, "times", item, _TIMES_ALLOWED)
        pairs.append((pair[0], pair[1]))
        spans.append((minutes[0], minutes[1]))
    return tuple(pairs), tuple(spans)


def _zone(what: str, key: Any) -> ZoneInfo:
    if not isinstance(key, str) or key.lower() in ("local", "localtime"):
        raise PolicyError(what, "location", key, _LOCATION_ALLOWED)
    try:
        return ZoneInfo(key)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise PolicyError(what, "location", key, _LOCATION_ALLOWED) from None


def _day_matches(day: int, last: int, span: Span) -> bool:
    """Alertmanager's day-of-month test: negatives count back from ``last``;
    a span starting after the month's end is skipped, one ending after it
    stops at it."""
    begin = last + span[0] + 1 if span[0] < 0 else span[0]
    end = last + span[1] + 1 if span[1] < 0 else span[1]
    if begin > last:
        return False
    return max(-last, min(begin, last)) <= day <= max(-last, min(end, last))


@dataclass(frozen=True)
class MuteWindow:
    """A recurring time when notices are held back (Alertmanager's time interval).

    Example::

        MuteWindow("nights", times=[("00:00", "07:00"), ("22:00", "24:00")],
                   weekdays=["monday:friday"], location="Europe/Berlin")

    Each field is optional (empty: any); the window is active when every
    given field matches the local time in ``location``: ``times`` are
    [start, end) minutes of the local day, and ``weekdays`` (names, a range
    counted from Sunday), ``days_of_month`` (1 to 31; -1 is the month's last
    day), ``months`` (names or 1 to 12) and ``years`` are inclusive ranges
    ``"begin:end"`` or single values. Windows sharing a name are
    alternatives, as the intervals under one name in Alertmanager.
    """

    name: str
    times: tuple[tuple[str, str], ...] = ()
    weekdays: tuple[str, ...] = ()
    days_of_month: tuple[str, ...] = ()
    months: tuple[str, ...] = ()
    years: tuple[str, ...] = ()
    location: str = "UTC"
    _tz: ZoneInfo = field(init=False, repr=False, compare=False)
    _ranges: dict[str, tuple[Span, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        what = f"mute window {self.name!r}"
        _check_id(what, "name", self.name)
        set_ = object.__setattr__
        times, spans = _minutes(what, self.times)
        set_(self, "times", times)
        parsed = {"times": spans}
        for key in ("weekdays", "days_of_month", "months", "years"):
            texts, parsed[key] = _spans(what, key, getattr(self, key))
            set_(self, key, texts)
        set_(self, "_ranges", parsed)
        set_(self, "_tz", _zone(what, self.location))

    def active(self, now: float) -> bool:
        """Whether ``now`` (seconds since the epoch) falls in the window."""
        # fromtimestamp() gives the wall clock the zone shows at that instant:
        # a skipped hour never appears, a repeated one appears twice.
        local = datetime.fromtimestamp(now, self._tz)
        spans = self._ranges
        minute = local.hour * 60 + local.minute
        if spans["times"] and not any(b <= minute < e for b, e in spans["times"]):
            return False
        last = calendar.monthrange(local.year, local.month)[1]
        values = {
            "weekdays": (local.weekday() + 1) % 7,  # Monday 0 -> Sunday 0
            "months": local.month,
            "years": local.year,
        }
        for key, value in values.items():
            if spans[key] and not any(b <= value <= e for b, e in spans[key]):
                return False
        return not spans["days_of_month"] or any(
            _day_matches(local.day, last, span) for span in spans["days_of_month"]
        )

    def to_mapping(self) -> dict[str, Any]:
        """The window as :func:`mute_window_from_mapping` takes it (``times``
        in Alertmanager's ``start_time``/``end_time`` form)."""
        out: dict[str, Any] = {"name": self.name}
        out["times"] = [{"start_time": s, "end_time": e} for s, e in self.times]
        for key in ("weekdays", "days_of_month", "months", "years"):
            out[key] = list(getattr(self, key))
        out["location"] = self.location
        return out


_WINDOW_KEYS = tuple(f.name for f in fields(MuteWindow) if f.init)


def mute_window_from_mapping(data: Any, where: str = "") -> MuteWindow:
    """A :class:`MuteWindow` from a mapping of its fields (``times`` as
    pairs or ``{"start_time": ..., "end_time": ...}``); unknown keys are
    refused by name, and a field set to null is not given."""
    return _from_mapping(MuteWindow, data, _WINDOW_KEYS, ("name",), "mute window", "name", where)


def muted_by(windows: Iterable[MuteWindow], names: Iterable[str] | None, now: float) -> list[str]:
    """The names of the windows active at ``now``, among ``names`` (None:
    all); a name no window has raises :class:`PolicyError`."""
    windows = tuple(windows)
    known = {w.name for w in windows}
    wanted = known if names is None else set(names)
    unknown = sorted(wanted - known)
    if unknown:
        allowed = (
            f"one of {', '.join(sorted(known))}" if known else "a window's name (none are set)"
        )
        raise PolicyError("mute windows", "name", unknown[0], allowed)
    active = [w.name for w in windows if w.name in wanted and w.active(now)]
    return list(dict.fromkeys(active))


# -- inhibition ---------------------------------------------------------------------------


@dataclass(frozen=True)
class InhibitRule:
    """Mutes the alerts ``target_matchers`` match while a firing alert that
    ``source_matchers`` match has the same value for every ``equal`` label
    (a missing label is ``""``).

    Example::

        InhibitRule([matcher_from_text('severity="critical"')],
                    [matcher_from_text('severity="warning"')], equal=["route"])

    Matchers may also be given as text forms (as settings files give them).

    As in Alertmanager, an alert both sides match is never inhibited by a
    source both sides match, so an alert never inhibits itself.
    """

    source_matchers: tuple[Matcher, ...]
    target_matchers: tuple[Matcher, ...]
    equal: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        what = "inhibit rule"
        for key in ("source_matchers", "target_matchers"):
            object.__setattr__(self, key, _matchers(what, key, getattr(self, key)))
        equal: Any = self.equal
        if isinstance(equal, (str, Mapping)) or not isinstance(equal, Iterable):
            raise PolicyError(what, "equal", equal, "a list of label names")
        equal = tuple(equal)
        for name in equal:
            if not isinstance(name, str) or not _LABEL_NAME.fullmatch(name):
                raise PolicyError(what, "equal", name, "label names of letters, digits and '_'")
        object.__setattr__(self, "equal", equal)

    def to_mapping(self) -> dict[str, Any]:
        return {
            "source_matchers": [str(m) for m in self.source_matchers],
            "target_matchers": [str(m) for m in self.target_matchers],
            "equal": list(self.equal),
        }


_INHIBIT_KEYS = ("source_matchers", "target_matchers", "equal")


def inhibit_rule_from_mapping(data: Any, where: str = "") -> InhibitRule:
    """An :class:`InhibitRule` from Alertmanager's form: ``source_matchers``
    and ``target_matchers`` as lists of text forms, ``equal`` label names."""
    return _from_mapping(
        InhibitRule, data, _INHIBIT_KEYS, _INHIBIT_KEYS[:2], "inhibit rule", "", where
    )


def inhibited_by(
    rules: Iterable[InhibitRule], firing: Sequence[Mapping[str, str]], labels: Mapping[str, str]
) -> Mapping[str, str] | None:
    """The labels of the firing alert that inhibits the one with ``labels``, or None."""
    for rule in rules:
        if not matches(rule.target_matchers, labels):
            continue
        both_sides = matches(rule.source_matchers, labels)
        for source in firing:
            if (
                matches(rule.source_matchers, source)
                and all(source.get(n, "") == labels.get(n, "") for n in rule.equal)
                and not (both_sides and matches(rule.target_matchers, source))
            ):
                return source
    return None


def inhibited(
    rules: Iterable[InhibitRule], firing: Sequence[Mapping[str, str]], labels: Mapping[str, str]
) -> bool:
    """Whether a firing alert inhibits the one with ``labels``."""
    return inhibited_by(rules, firing, labels) is not None


# -- the notification path's question -----------------------------------------------------


@dataclass(frozen=True)
class NotificationPolicy:
    """Silences, mute windows and inhibit rules together: ask
    :meth:`why_muted` for each notice."""

    silences: tuple[Silence, ...] = ()
    mute_windows: tuple[MuteWindow, ...] = ()
    inhibit_rules: tuple[InhibitRule, ...] = ()
    #: Alert names held back by the app's own state, with why (while an
    #: alert over readiness_failing fires, the error and latency alerts:
    #: see .service).
    held: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key, kind in (
            ("silences", Silence), ("mute_windows", MuteWindow), ("inhibit_rules", InhibitRule)
        ):  # fmt: skip
            items: Any = getattr(self, key)
            if not isinstance(items, Iterable) or not all(isinstance(i, kind) for i in items):
                raise PolicyError("notification policy", key, items, f"a list of {kind.__name__}")
            object.__setattr__(self, key, tuple(items))
        seen: set[str] = set()
        for silence in self.silences:
            if silence.id in seen:
                raise PolicyError("notification policy", "silences", silence.id, "unique ids")
            seen.add(silence.id)

    def why_muted(
        self,
        labels: Mapping[str, str],
        firing: Sequence[Mapping[str, str]],
        now: float,
        window_names: Iterable[str] | None = None,
    ) -> str | None:
        """Why a notice about the alert with ``labels`` is held back at
        ``now``, or None to send it: ``"silenced by <id>"``, ``"muted by
        window <name>"`` or ``"inhibited by <alertname>"``. ``firing`` holds
        the labels of the alerts firing now; ``window_names`` the windows
        that apply to this notice (None: every window)."""
        ids = silenced_by(self.silences, labels, now)
        if ids:
            return f"silenced by {', '.join(ids)}"
        names = muted_by(self.mute_windows, window_names, now)
        if names:
            return f"muted by window {', '.join(names)}"
        source = inhibited_by(self.inhibit_rules, firing, labels)
        if source is None:
            return self.held.get(labels.get("alertname", ""))
        pairs = ",".join(f'{k}="{v}"' for k, v in sorted(source.items()))
        return f"inhibited by {source.get('alertname') or '{' + pairs + '}'}"
