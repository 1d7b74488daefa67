"""Alert notices as outbox rows, and the thread that delivers them.

A transition receivers are told of becomes one row per channel, written in
the same transaction as the transition itself (see
:meth:`.store.SQLAlertStore.commit`): a notice is never lost because a
process died between deciding and sending, and never written by an
evaluator that lost its lease. Every process of the app runs a sender: it
claims due rows for a while (so two senders never send one row at once),
sends them, and marks each delivered only after the receiver accepted it;
a failure is retried with exponential backoff and jitter, no sooner than a
receiver's ``Retry-After``; a refusal for good (404, 410, 401, ...) marks
the row failed. A sender that dies mid-send leaves its claim to expire and
another sends the row again: delivery is at least once, with the row's
``webhook-id`` a stable key receivers deduplicate by.

Within one channel the notices of one episode go in order: a resolve is
never claimed before its firing was delivered (or failed for good).
Firing and flapping notices go to the channels whose severities include
the rule's; a resolve goes to every channel its episode's firing went to.

A failure every notice would meet (the receiver gone, 401/403/404/410, a
certificate refused, an address not allowed) disables the channel instead
of failing the notice: its rows are kept, nothing is sent to it but one
probe (its oldest due row) every :data:`PROBE_SECONDS`, and the built-in
``aegis_channel_disabled`` alert fires and goes to the other channels. The
first delivery enables it again, as does a change of its settings (a
disabled channel is disabled with its settings' fingerprint: a process
with other settings for it sends as usual, and its first success enables
it for all). Every attempt is kept (``aegis_alert_attempts``).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import threading
import uuid
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, NamedTuple

from ..core.sink import JITTER
from .channels import Channel, Delivery, PagerDutyChannel
from .evaluator import FIRING, Transition
from .grouping import group_payload, notification_key
from .silences import NotificationPolicy

logger = logging.getLogger("aegis_mw.alerts")

#: How long a sender holds the rows it claims until it starts sending each
#: (a sender that dies leaves them to the others this much later).
CLAIM_SECONDS = 30.0
#: Each send holds its row anew, for its channel's timeout (which bounds the
#: send) twice over plus this, for the address lookup the timeout does not bound.
SEND_MARGIN = 10.0
#: Rows claimed at once.
CLAIM_LIMIT = 200
#: Backoff: the first retry after about this many seconds, doubling, at most MAX.
BACKOFF_FIRST = 2.0
BACKOFF_MAX = 300.0
#: Seconds between looks for due rows.
POLL_SECONDS = 1.0
#: Seconds between probes of a disabled channel.
PROBE_SECONDS = 600.0
_ZERO_TIME = "0001-01-01T00:00:00Z"


class Notice(NamedTuple):
    """One outbox row to write: ``channel`` None for every channel that has a
    notice of the same episode (a resolve follows its firing). ``alert_key``
    names the alert (rule and group): a channel's notices of one alert go in
    order, whatever their episodes."""

    channel: str | None
    key: str
    alert_key: str
    episode: str
    payload: str
    #: The transition's time.
    at: float
    #: The alert's labels (its group, per channel: see .grouping).
    labels: Mapping[str, str] = {}


class Claimed(NamedTuple):
    """A row a sender holds: ``claim`` is the token its outcome is written by."""

    id: int
    channel: str
    key: str
    payload: str
    attempts: int
    claim: str
    #: The row's group on its channel ('' for none: sent alone).
    group_key: str = ""
    #: Whether a notice of the row's episode was delivered on its channel
    #: before it (a resolve is sent only where its firing was).
    announced: bool = True


class ChannelState(NamedTuple):
    """A disabled channel: with which settings, why, since when, and when
    its next probe is due."""

    channel: str
    fingerprint: str
    reason: str
    disabled_at: float
    probe_at: float


def channel_fingerprint(channel: Any) -> str:
    """A digest of a channel's settings: the same channel with other settings
    (a new URL, a new token) has another. Its secrets are among them, so it
    is scrypt's, salted by the channel's name: the digest stored beside a
    disabled channel is no quick test of a guessed password."""
    if dataclasses.is_dataclass(channel) and not isinstance(channel, type):
        fields: Any = dataclasses.astuple(channel)
    else:
        fields = vars(channel)
    text = f"{type(channel).__name__}:{fields!r}"
    salt = f"aegis_mw alert channel {getattr(channel, 'name', '')}".encode()
    return hashlib.scrypt(text.encode(), salt=salt, n=2**14, r=8, p=1, dklen=16).hex()


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat().replace("+00:00", "Z")


#: The alert name of a test notice.
TEST_RULE = "aegis_test"


def test_notice(at: float, sender: str) -> dict[str, Any]:
    """A test notice in the shape of every notice, saying who sent it."""
    transition = Transition(
        rule=TEST_RULE, group=(), kind="test", from_state="inactive", to_state=FIRING, at=at,
        value=None, severity="info", episode=f"aegis-test-{uuid.uuid4().hex}", notify=True,
        labels={"alertname": TEST_RULE, "severity": "info"},
        annotations={
            "summary": f"Test notice from {sender}: no alert is firing.",
            "description": "Sent by hand to check that this channel's notices arrive.",
        },
    )  # fmt: skip
    return notice_payload(transition)


def send_test(channel: Channel, at: float, sender: str) -> Delivery:
    """One test notice through ``channel``, now. The result says delivered or
    why not: a status or a fault, never the answer's body nor the channel's
    URL or secret (Delivery.error is written so)."""
    try:
        return channel.send(f"{TEST_RULE}.test.{at:.3f}", test_notice(at, sender))
    except Exception as exc:  # a channel's own fault, as the sender reports it
        return Delivery(False, f"{type(exc).__name__} while sending")


def notice_payload(transition: Transition) -> dict[str, Any]:
    """A transition in the shape of Alertmanager's webhook payload (one
    alert), with ours under ``aegis``."""
    firing = transition.to_state == FIRING
    status = "firing" if firing else "resolved"
    labels = dict(transition.labels)
    alert = {
        "status": status,
        "labels": labels,
        "annotations": dict(transition.annotations),
        "startsAt": _iso(transition.at) if firing else _ZERO_TIME,
        "endsAt": _ZERO_TIME if firing else _iso(transition.at),
        "generatorURL": "",
        "fingerprint": transition.episode,
    }
    return {
        "version": "4",
        "status": status,
        "groupKey": json.dumps([transition.rule, list(map(list, transition.group))]),
        "groupLabels": {"alertname": transition.rule, **dict(transition.group)},
        "commonLabels": labels,
        "commonAnnotations": dict(transition.annotations),
        "externalURL": "",
        "alerts": [alert],
        "truncatedAlerts": 0,
        "aegis": {
            "kind": transition.kind,
            "episode": transition.episode,
            "value": transition.value,
            "at": transition.at,
        },
    }


def notices_for(transitions: Iterable[Transition], channels: Mapping[str, Channel]) -> list[Notice]:
    """The outbox rows of an evaluation's transitions."""
    out = []
    for transition in transitions:
        if not transition.notify:
            continue
        payload = json.dumps(notice_payload(transition), separators=(",", ":"))
        labels = dict(transition.labels)
        kind = transition.kind
        # Firings (repeats, flapping notices) go to channels by severity; the
        # rest resolve (a resolve, the end of flapping settled resolved) and
        # go where their episode went.
        by_severity = transition.to_state == FIRING or kind == "flapping"
        if not by_severity and kind != "resolved":
            kind += ".resolved"  # its episode's rows pruned once it is done (see the store)
        key = f"{transition.episode or transition.rule}.{kind}.{transition.at:.3f}"
        alert = json.dumps([transition.rule, [list(pair) for pair in transition.group]])
        if by_severity:
            # The alert about a channel (aegis_channel_disabled) goes to the others.
            about = dict(transition.group).get("channel")
            for name, channel in channels.items():
                if transition.severity in channel.severities and name != about:
                    out.append(
                        Notice(name, key, alert, transition.episode, payload, transition.at, labels)
                    )
        else:
            out.append(Notice(None, key, alert, transition.episode, payload, transition.at, labels))
    return out


def backoff(attempts: int, retry_after: float | None) -> float:
    """Seconds before the next try after ``attempts`` failed ones."""
    wait = min(BACKOFF_MAX, BACKOFF_FIRST * 2.0 ** max(attempts - 1, 0))
    return max(wait * JITTER.uniform(0.8, 1.2), retry_after or 0.0)


class AlertSender:
    """The thread that delivers due outbox rows (one per process)."""

    def __init__(
        self,
        store: Any,
        channels: Mapping[str, Channel],
        *,
        wall: Callable[[], float],
        claimer: str,
    ) -> None:
        self.store = store
        #: The channels and their fingerprints, replaced together (a send
        #: in progress keeps the pair it started with).
        self._config: tuple[dict[str, Channel], dict[str, str]] = ({}, {})
        #: Per channel whose rate limit was used up: when it allows one more
        #: (its rows are not claimed before, only to be released again).
        self._limited: dict[str, float] = {}
        self.set_channels(channels)
        self.wall = wall
        self.claimer = claimer
        self._stop = threading.Event()
        #: Set by the evaluator after a commit with notices, and by stop().
        self.wakeup = threading.Event()
        self._thread: threading.Thread | None = None
        self._starting = threading.Lock()
        self._running = False
        self._failing = False
        #: The notification policy and the labels of the alerts firing, as
        #: this process's last evaluation saw them (set by the service): a
        #: row due later than it was written (group_wait, a retry, a channel
        #: down) is held back if the policy holds it back by then.
        self.mutes: tuple[NotificationPolicy, Sequence[Mapping[str, str]]] | None = None

    @property
    def channels(self) -> dict[str, Channel]:
        return self._config[0]

    @property
    def fingerprints(self) -> dict[str, str]:
        return self._config[1]

    def set_channels(self, channels: Mapping[str, Channel]) -> None:
        """Send to these channels from now on (the API changed some). A
        fingerprint is computed only for a channel that is new or changed."""
        known, prints = self._config
        # A limit used up under other settings says nothing of the new ones.
        self._limited = {
            name: until for name, until in self._limited.items()
            if name in channels and known.get(name) == channels[name]
        }  # fmt: skip
        self._config = (
            dict(channels),
            {
                name: prints[name] if known.get(name) == channel else channel_fingerprint(channel)
                for name, channel in channels.items()
            },
        )

    def start(self) -> None:
        with self._starting:  # one thread, whoever starts it (the service, a reload)
            self._running = True
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop = threading.Event()
            ref = weakref.ref(self)
            self._thread = threading.Thread(
                target=_run, args=(ref, self._stop), name="aegis-alert-sender", daemon=True
            )
            self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        self._running = False
        thread, self._thread = self._thread, None
        self._stop.set()
        self.wakeup.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def reset_after_fork(self, claimer: str) -> None:
        self.claimer = claimer
        self._thread = None
        self._starting = threading.Lock()
        self.wakeup = threading.Event()  # the parent's may be mid-wait
        if self._running:
            self.start()

    def send_due(self) -> int:
        """Claim and send what is due now; how many were handled. Never
        raises an Exception (the store down: logged once per streak)."""
        try:
            handled = self._send_due()
        except Exception:
            if not self._failing:
                logger.warning("aegis_mw: alert notices could not be sent", exc_info=True)
            self._failing = True
            return 0
        self._failing = False
        return handled

    def _send_due(self) -> int:
        now = self.wall()
        config = self._config
        channels, fingerprints = config
        states = self.store.channel_states()
        disabled = {
            name: state for name, state in states.items()
            if fingerprints.get(name) == state.fingerprint
        }  # fmt: skip
        # Only the channels configured here: a process of another
        # configuration (a deploy rolling out a new channel) leaves the rows
        # of channels it does not know to the processes that do.
        usable = sorted(
            name for name in channels
            if name not in disabled and self._limited.get(name, now) <= now
        )  # fmt: skip
        taken = self.store.claim_notices(self.claimer, now, CLAIM_SECONDS, CLAIM_LIMIT, usable)
        handled = len(taken)
        # Held back first: a firing skipped takes no slot of a rate limit.
        claimed = self._unheld(taken, channels, now)
        for name in sorted(disabled):
            if disabled[name].probe_at <= now:  # one row, to see whether it works again
                # The next probe is set first: a probe that fails otherwise
                # (a 503, a timeout) waits its turn as one that fails alike.
                self.store.disable_channel(disabled[name]._replace(probe_at=now + PROBE_SECONDS))
                # A notice that is sent: the ones held back meanwhile (at most
                # a claim's worth) are skipped, not taken as the probe.
                for _ in range(CLAIM_LIMIT):
                    probe = self.store.claim_notices(self.claimer, now, CLAIM_SECONDS, 1, [name])
                    handled += len(probe)
                    kept = self._unheld(probe, channels, now)
                    if kept or not probe:
                        claimed += kept
                        break
        broken: set[str] = set()
        batches, waiting = self._within_limits(_batches(claimed), now, channels)
        for batch in batches:
            if self._stop.is_set():
                break  # stopping: the rest are sent by whoever claims them next
            self._send_batch(batch, states, broken, config)
        # Rows left for a rate limit are not handled: a claim of nothing else
        # waits for the poll instead of claiming them again at once.
        return handled - waiting

    def _unheld(
        self, rows: Sequence[Claimed], channels: Mapping[str, Channel], now: float
    ) -> list[Claimed]:
        """The claimed rows to send: a firing the policy holds back by now
        (see :meth:`held_back`) is finished as skipped, saying why."""
        if self.mutes is None:
            return list(rows)
        kept = []
        for row in rows:
            why = self.held_back(json.loads(row.payload), channels[row.channel], now)
            if why is None:
                kept.append(row)
            else:
                self.store.finish_notice(row.id, row.claim, "skipped", now, why, now)
        return kept

    def _within_limits(
        self, batches: list[list[Claimed]], now: float, channels: Mapping[str, Channel]
    ) -> tuple[list[list[Claimed]], int]:
        """The notifications to send now, each channel within its rate limit:
        what is over it goes as one digest in the last notification the
        limit allows (never dropped; PagerDuty's events, one per alert,
        wait instead), or waits, released, when the limit is used up; and
        how many rows wait."""
        by_channel: dict[str, list[list[Claimed]]] = {}
        for batch in batches:
            by_channel.setdefault(batch[0].channel, []).append(batch)
        out: list[list[Claimed]] = []
        waiting = 0
        for name, planned in by_channel.items():
            limit = channels[name].rate_limit
            if limit is None:
                out += planned
                continue
            count, per = limit
            sent, first = self.store.sends_since(name, now - per)
            allowed = count - sent
            if len(planned) <= allowed:
                out += planned
                continue
            if allowed <= 0 or isinstance(channels[name], _EventsOnly):
                keep, wait = planned[: max(allowed, 0)], planned[max(allowed, 0) :]
            else:
                keep = [*planned[: allowed - 1], [row for b in planned[allowed - 1 :] for row in b]]
                wait = []
            out += keep
            # Released; claimed here again once the limit allows one more, as
            # the first send it counts leaves its period.
            self._limited[name] = now if first is None else first + per
            for batch in wait:
                for row in batch:
                    self.store.renew_claim(row.id, row.claim, now, now)
                waiting += len(batch)
        return out, waiting

    def _send_batch(
        self, batch: list[Claimed], states: Mapping[str, ChannelState], broken: set[str],
        config: tuple[dict[str, Channel], dict[str, str]],
    ) -> None:  # fmt: skip
        """Send one group's rows as one notification (or one row alone)."""
        start = self.wall()
        name = batch[0].channel
        if name in broken:  # disabled by an earlier batch: let the rows go at once
            for row in batch:
                self.store.renew_claim(row.id, row.claim, start, start)
            return
        channel = config[0][name]
        hold = 2 * channel.timeout + SEND_MARGIN
        rows: list[Claimed] = []
        payloads = []
        for row in batch:
            payload = json.loads(row.payload)
            if payload.get("status") == "resolved" and not row.announced:
                # Its firing never reached this channel: no resolve of nothing.
                self.store.finish_notice(
                    row.id, row.claim, "skipped", start, "its firing was not delivered here",
                    start,
                )  # fmt: skip
                continue
            # Each send holds its rows anew: a batch of slow sends never lets
            # a claim run out under a row still being sent.
            if self.store.renew_claim(row.id, row.claim, start + hold, start):
                rows.append(row)
                payloads.append(payload)
        if not rows:
            return
        keys = {row.group_key for row in rows}
        # One group's rows, or a digest of several groups (a rate limit's).
        notice = group_payload(payloads, keys.pop() if len(keys) == 1 else "")
        try:
            result = channel.send(notification_key([row.key for row in rows]), notice)
        except Exception as exc:  # a channel's own fault: retried, never fatal
            result = Delivery(False, f"{type(exc).__name__} while sending")
        done = self.wall()
        send_id = uuid.uuid4().hex
        # One wait for the whole notification: retried, its rows stay one
        # notification under one key (a receiver deduplicates by it).
        wait = backoff(max(row.attempts for row in rows) + 1, result.retry_after)
        for row in rows:
            self._finish(
                row, result, start, done, states.get(name), broken, send_id, wait,
                config[1][name],
            )  # fmt: skip

    def held_back(self, payload: Mapping[str, Any], channel: Channel, now: float) -> str | None:
        """Why a firing notice (a repeat, a flapping notice that fires) is not
        to be sent at ``now`` after all: a silence, a mute window or an
        inhibiting alert that began since it was written, as the policy of
        the time says (None: send it). A notice that resolves always goes."""
        if self.mutes is None or payload.get("status") != "firing":
            return None
        policy, firing = self.mutes
        alerts = payload.get("alerts") or [{}]
        why = policy.why_muted(alerts[0].get("labels") or {}, firing, now, channel.mute_windows)
        return None if why is None else f"held back when due: {why}"

    def _finish(
        self, row: Claimed, result: Delivery, start: float, done: float,
        state: ChannelState | None, broken: set[str], send_id: str, wait: float,
        fingerprint: str,
    ) -> None:  # fmt: skip
        took = done - start
        finish = functools.partial(self.store.finish_notice, seconds=took, send_id=send_id)
        if result.delivered:
            finish(row.id, row.claim, "delivered", done, "", done)
            if state is not None and self.store.enable_channel(row.channel):
                logger.warning("aegis_mw: alert channel %s works again", row.channel)
        elif result.broken:
            # Kept, due at once when the channel works again.
            finish(row.id, row.claim, "pending", done, result.error, done, outcome="disabled")
            if row.channel in broken:
                return  # disabled by another row of this notification
            again = state is not None and state.fingerprint == fingerprint
            self.store.disable_channel(
                ChannelState(
                    row.channel, fingerprint, result.error,
                    state.disabled_at if again and state is not None else done,
                    done + PROBE_SECONDS,
                )
            )  # fmt: skip
            broken.add(row.channel)
            if not again:
                logger.error(
                    "aegis_mw: alert channel %s disabled: %s; its notices are kept, and it is "
                    "tried again every %g s", row.channel, result.error, PROBE_SECONDS,
                )  # fmt: skip
        elif result.permanent:
            finish(row.id, row.claim, "failed", done, result.error, done)
            logger.warning(
                "aegis_mw: alert notice to %s failed for good: %s", row.channel, result.error
            )
        else:
            finish(row.id, row.claim, "pending", done + wait, result.error, done)


#: Channels whose notifications cannot hold several alerts (an event each).
_EventsOnly = PagerDutyChannel


def _batches(claimed: Sequence[Claimed]) -> list[list[Claimed]]:
    """Claimed rows by notification: a group's rows on its channel together,
    a row of no group alone; in the order of their first row."""
    out: dict[tuple[str, str] | int, list[Claimed]] = {}
    for row in claimed:
        out.setdefault((row.channel, row.group_key) if row.group_key else row.id, []).append(row)
    return list(out.values())


def _run(ref: weakref.ReferenceType[AlertSender], stop: threading.Event) -> None:
    while True:
        sender = ref()
        if sender is None:
            return
        wake = sender.wakeup
        wake.clear()  # before looking: a wake-up from now on is not missed
        handled = sender.send_due()
        del sender
        if stop.is_set():
            return
        # More may be due at once when a whole claim was taken; else wait for
        # the poll, or for this process's evaluator to commit new notices.
        if handled < CLAIM_LIMIT:
            wake.wait(POLL_SECONDS)
