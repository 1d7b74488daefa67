"""The alert service: one thread per process, one evaluator per app.

Every ``interval`` seconds each process's service asks the store for the
evaluator's lease (see :mod:`.store`). The holder reads every rule's window
figures from the shared rollups, evaluates (:func:`.evaluator.evaluate`)
and commits the changed instances and the transitions under its fencing
token; the others only refresh what they show from the store, so the
dashboard and the stream of every worker show the same alerts.

Notices (the transitions receivers are told of) go to the ``aegis_mw.alerts``
logger, after their commit: a process that lost the lease writes and logs
nothing. Everything runs on this thread, never on an event loop; a failure
(the store down) is logged once per streak and the thread carries on.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from ..core.errors import ConfigError
from ..core.leases import holder_id
from .api_channels import WHERE, api_channel, refusal
from .channels import Channel, Networks
from .evaluator import (
    FIRING,
    NODATA,
    PENDING,
    Instance,
    Key,
    Transition,
    alert_labels,
    evaluate,
    render,
)  # fmt: skip
from .figures import SETTLE_SECONDS, RollupReader
from .outbox import AlertSender, ChannelState, Notice, notices_for
from .reports import LIVE_INTERVALS, REPORT_INPUTS, ReportReader
from .rules import READINESS_INHIBITED, SEVERITIES, AlertRule, RuleError, rule_from_mapping
from .silences import InhibitRule, MuteWindow, NotificationPolicy
from .sliding import SlidingFigures
from .store import (
    CHANNEL,
    REPORTS_KEPT,
    RULE,
    SHOWN,
    AlertStore,
    Revisions,
    StoredItem,
    changes_between,
)

logger = logging.getLogger("aegis_mw.alerts")

#: The lease lasts this many intervals: a holder that stops renewing it is
#: replaced after at most this many intervals, plus one.
LEASE_INTERVALS = 1.5
#: The evaluating process deletes transitions older than the history's
#: retention at most this often, at most PRUNE_LIMIT rows at a time.
PRUNE_EVERY = 3600.0
PRUNE_LIMIT = 10_000
#: The most rules the API may keep in the store (besides the settings' own).
API_RULE_LIMIT = 1000
#: Seconds a write through the API waits for a tick in progress before its
#: process reads the API's rules and channels again (see AlertService.reload).
RELOAD_WAIT = 10.0
#: Seconds a pending notice of a channel no live process has is kept.
ORPHAN_SECONDS = 3600.0

#: The alert raised while a channel is disabled (see .outbox), added to the
#: rules when there are channels and no rule of the app's own watches them.
CHANNEL_RULE = AlertRule(
    name="aegis_channel_disabled", input="channel_disabled", operator=">", threshold=0,
    group_by=("channel",), severity="critical",
    annotations={
        "summary": "alert channel $channel is disabled: its notices are held",
        "description": "A send to $channel failed in a way every notice would (the "
        "receiver gone, its credentials refused). Its notices are kept and sent once it "
        "works again; see the alert API's channels for the reason.",
    },
)  # fmt: skip


#: The alert raised while a critical health check fails (the app is not
#: ready), added when error or latency rules would be held back by it and
#: no rule of the app's own watches readiness. While it fires, their
#: firings wait: they are its symptoms.
READINESS_RULE = AlertRule(
    name="aegis_readiness_failing", input="readiness_failing", operator=">", threshold=0,
    group_by=("check",), severity="critical",
    annotations={
        "summary": "health check $check fails in $value processes: the app is not ready",
        "description": "A critical health check fails (see /health). While this alert "
        "fires, the firings of the error and latency alerts are held back: they are its "
        "symptoms, and are sent if they still fire once it resolves.",
    },
)  # fmt: skip
BUILTIN_RULES = (CHANNEL_RULE.name, READINESS_RULE.name)


class AlertService:
    """Evaluates ``rules`` over ``reader``'s rollups while it holds ``store``'s lease."""

    def __init__(
        self,
        rules: Sequence[AlertRule],
        store: AlertStore,
        reader: RollupReader,
        *,
        interval: float,
        wall: Callable[[], float],
        retention: float = 90 * 86400.0,
        settle: float = SETTLE_SECONDS,
        channels: Mapping[str, Channel] | None = None,
        mute_windows: Sequence[MuteWindow] = (),
        inhibit_rules: Sequence[InhibitRule] = (),
        horizons: Mapping[int, float] | None = None,
        reporter: Callable[[], Mapping[str, Any]] | None = None,
        readiness_inhibits: bool = True,
        api_networks: Networks = (),
    ) -> None:
        #: The rules of the app's settings (or code): the API cannot change them.
        self.settings_rules = tuple(rules)
        #: The rules written through the API, read from the store when its
        #: revision of them changes, with who wrote each and when.
        self.api_rules: tuple[AlertRule, ...] = ()
        self.api_rule_rows: dict[str, StoredItem] = {}
        #: Stored rules not evaluated, and why (no longer valid, a name taken).
        self.left_out: dict[str, str] = {}
        #: The channels written through the API, as for rules, and those
        #: left out (a reference not set in this process, a name taken).
        self.api_channel_rows: dict[str, StoredItem] = {}
        self.channels_left_out: dict[str, str] = {}
        #: The networks the API's channels may reach though not public.
        self.api_networks = tuple(api_networks)
        self._revisions = Revisions(0, 0)
        #: Seconds each rollup resolution is kept: a window must fit in it.
        self.horizons = dict(horizons or {})
        #: This process's report of its health (see .reports); None: none.
        self.reporter = reporter
        #: Whether a failing readiness check holds back the error and
        #: latency alerts' firings.
        self.readiness_inhibits = readiness_inhibits
        self._reports = ReportReader()
        self._reported = False  # this process's report is in the store
        #: The channels the live processes have (None: not known).
        self.known_channels: frozenset[str] | None = None
        self.store = store
        self.reader = reader
        self.interval = interval
        self.wall = wall
        #: Seconds transitions are kept (the rollups' retention).
        self.retention = retention
        self._pruned_at = float("-inf")
        #: Seconds a bucket is left before windows include it.
        self.settle = settle
        self.holder = holder_id()
        #: The channels of the app's settings (or code).
        self.settings_channels: dict[str, Channel] = dict(channels or {})
        #: Where notices go (see .channels): the settings' and the API's;
        #: none: the log only. Replaced whole when the API's change.
        self.channels: dict[str, Channel] = dict(self.settings_channels)
        #: Every rule evaluated: the settings', the API's and the built-in
        #: ones that apply (see _all_rules).
        self.rules = self._all_rules()
        #: Delivers the outbox's notices (a thread of its own, every process).
        self.sender = AlertSender(store, self.channels, wall=wall, claimer=self.holder)
        #: The fencing token while this process evaluates, else None.
        self.token: int | None = None
        self._instances: dict[Key, Instance] = {}
        #: The windows' running sums, kept between this process's evaluations.
        self._figures = SlidingFigures(reader, self.rules, settle)
        #: Per rule: "" when it evaluated, else the problem (the holder's view).
        self.health: dict[str, str] = {}
        #: The instances shown (pending, firing), and those without data,
        #: refreshed every tick.
        self.shown: list[Instance] = []
        self.nodata: list[Instance] = []
        #: Each channel's health and outbox rows, refreshed every tick.
        self.channel_view: list[dict[str, Any]] = []
        self.mute_windows = tuple(mute_windows)
        self.inhibit_rules = tuple(inhibit_rules)
        #: Silences (read every tick), mute windows and inhibit rules.
        self.policy = NotificationPolicy((), self.mute_windows, self.inhibit_rules)
        #: Notices held back by the policy (this process's evaluations).
        self.muted = 0
        self.evaluations = 0
        self.failures = 0
        #: Called in the evaluating process with each transition to firing,
        #: after it is stored (Aegis opens an incident with alert_incidents).
        self.on_firing: Callable[[Transition], object] | None = None
        self._failing = False
        self._stop = threading.Event()
        self._running = False
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._ticking = threading.Lock()

    # -- life ---------------------------------------------------------------------
    def start(self) -> None:
        with self._lock:
            self._running = True
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop = threading.Event()
            ref = weakref.ref(self)
            self._thread = threading.Thread(
                target=_run, args=(ref, self._stop, self.interval), name="aegis-alerts", daemon=True
            )
            self._thread.start()
            if self.channels:
                self.sender.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop evaluating and hand the lease on at once."""
        with self._lock:
            self._running = False
            thread, self._thread = self._thread, None
        self._stop.set()
        # One deadline for both threads (a send in progress ends within its
        # channel's timeout; an evaluation within its store's).
        deadline = None if timeout is None else time.monotonic() + timeout
        self.sender.stop(timeout)
        if thread is not None and thread is not threading.current_thread():
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                # Still in a tick (a store that hangs): its lease runs out
                # on its own; released now, the tick could take it again.
                return
        if self._reported:
            self._reported = False
            try:  # no longer counted as a live process's
                self.store.remove_report(self.holder)
            except Exception:  # the store is down: it ages out on its own
                logger.debug("aegis_mw: could not remove this process's report", exc_info=True)
        if self.token is not None:
            self.token = None
            try:
                self.store.release(self.holder)
            except Exception:  # the store is down: the lease expires on its own
                logger.warning("aegis_mw: could not release the alert lease", exc_info=True)

    def reset_after_fork(self) -> None:
        """In a forked child: a process of its own, with its own thread if
        the parent's was running (not after a shutdown)."""
        self.holder = holder_id()
        self.token = None
        self._instances = {}
        self._figures = SlidingFigures(self.reader, self.rules, self.settle)
        self._thread = None
        self._lock = threading.Lock()
        self._ticking = threading.Lock()  # a parent's tick may have held it
        self._reported, self._reports = False, ReportReader()  # the parent's report is its own
        reset_store = getattr(self.store, "reset_after_fork", None)
        if reset_store is not None:
            reset_store()
        self.sender.reset_after_fork(self.holder)
        if self._running:
            self.start()

    # -- rules --------------------------------------------------------------------
    def _all_rules(self) -> tuple[AlertRule, ...]:
        """The settings' and the API's rules, and each built-in rule that
        applies and that no rule of the app's own replaces (by its input or
        its name): CHANNEL_RULE with channels, READINESS_RULE with reports
        and rules whose firings it would hold back."""
        rules = self.settings_rules + self.api_rules
        wanted = (
            (CHANNEL_RULE, bool(self.channels)),
            (READINESS_RULE, self.reporter is not None and self.readiness_inhibits
             and any(rule.input in READINESS_INHIBITED for rule in rules)),
        )  # fmt: skip
        for builtin, applies in wanted:
            if applies and not any(
                rule.input == builtin.input or rule.name == builtin.name for rule in rules
            ):
                rules += (builtin,)
        return rules

    def check_rule(self, rule: AlertRule) -> None:
        """RuleError when the rule cannot be evaluated here: its window is
        longer than its rollups are kept."""
        kept = self.horizons.get(rule.resolution)
        if kept is not None and rule.window > kept:
            raise RuleError(
                rule.name, "window", rule.window,
                f"at most the {kept:g} s its {rule.resolution} s rollups are kept "
                "(retention_raw)",
            )  # fmt: skip

    def rule_source(self, name: str) -> str:
        """Where a rule comes from: "settings", "api", "builtin" or ""."""
        if any(rule.name == name for rule in self.settings_rules):
            return "settings"
        if name in self.api_rule_rows:
            return "api"
        return "builtin" if name in BUILTIN_RULES else ""

    def channel_source(self, name: str) -> str:
        """Where a channel comes from: "settings", "api" or ""."""
        if name in self.settings_channels:
            return "settings"
        return "api" if name in self.api_channel_rows else ""

    def build_api_channel(self, name: str, settings: Mapping[str, Any]) -> Channel:
        """A channel the API writes or wrote, checked here (ConfigError
        naming ``channel.FIELD``): its mute windows must be this app's."""
        channel = api_channel(name, settings, self.api_networks)
        windows = {window.name for window in self.mute_windows}
        unknown = sorted(set(channel.mute_windows) - windows)
        if unknown:
            raise ConfigError(
                f"{WHERE}.mute_windows", unknown[0],
                f"a name of alert_mute_windows ({', '.join(sorted(windows)) or 'none defined'})",
            )  # fmt: skip
        return channel

    def reload(self) -> None:
        """Read the API's rules and channels now (after a write through this
        process: its answers and a test notice see the change at once), not
        at the next tick. Waits at most RELOAD_WAIT for a tick in progress
        (the next tick reads them otherwise); never raises an Exception."""
        if not self._ticking.acquire(timeout=RELOAD_WAIT):
            return
        try:
            self._refresh_config()
        except Exception:  # the store down: the next tick reads them
            logger.debug("aegis_mw: the API's rules and channels not read again", exc_info=True)
        finally:
            self._ticking.release()

    def _refresh_config(self) -> None:
        """The API's rules and channels read again when their revision moved
        (one cheap query a tick otherwise). A stored one that no longer
        reads (written by another version, a reference not set here) or
        whose name the settings have is left out and logged, never a failed
        tick."""
        revisions = self.store.revisions()
        if revisions == self._revisions:
            return
        rules_before = self.rules
        if revisions.rules != self._revisions.rules:
            self._refresh_rules()
        if revisions.channels != self._revisions.channels:
            self._refresh_channels()
        self.rules = self._all_rules()
        if self.rules != rules_before:
            # The sums of the windows the old set shares are kept; a new
            # window is read whole once.
            self._figures = self._figures.with_rules(self.rules)
        self._revisions = revisions

    def _refresh_rules(self) -> None:
        _, rows = self.store.api_items(RULE)
        taken = {rule.name for rule in self.settings_rules}
        rules, kept, left_out = [], {}, {}
        for row in rows:
            try:
                rule = rule_from_mapping(row.data, row.name)
                self.check_rule(rule)
            except (RuleError, TypeError) as exc:
                left_out[row.name] = str(exc)
            except Exception as exc:  # not a mapping at all (written by hand)
                left_out[row.name] = f"unreadable ({type(exc).__name__})"
            else:
                if rule.name in BUILTIN_RULES:
                    left_out[row.name] = "a built-in rule has its name"
                elif rule.name in taken or rule.name != row.name:
                    left_out[row.name] = "a rule of the settings has its name"
                else:
                    rules.append(rule)
                    kept[row.name] = row
        for name, why in left_out.items():
            logger.warning("aegis_mw: the stored alert rule %r is left out: %s", name, why)
        # The rows first: a reader of the rules finds each API rule's row.
        self.api_rule_rows, self.left_out = kept, left_out
        self.api_rules = tuple(rules)

    def _refresh_channels(self) -> None:
        _, rows = self.store.api_items(CHANNEL)
        channels, kept, left_out = dict(self.settings_channels), {}, {}
        for row in rows:
            if row.name in self.settings_channels:
                left_out[row.name] = "a channel of the settings has its name"
                continue
            try:
                channels[row.name] = self.build_api_channel(row.name, row.data)
            except ConfigError as exc:
                left_out[row.name] = refusal(exc)[1]
            except Exception as exc:  # not a mapping, a field of the wrong kind
                left_out[row.name] = f"unreadable settings ({type(exc).__name__})"
            else:
                kept[row.name] = row
        for name, why in left_out.items():
            logger.warning("aegis_mw: the stored alert channel %r is left out: %s", name, why)
        self.api_channel_rows, self.channels_left_out = kept, left_out
        self.sender.set_channels(channels)
        self.channels = channels
        with self._lock:  # not after stop() has stopped it
            if channels and self._running:
                self.sender.start()

    # -- one tick -----------------------------------------------------------------
    def tick(self) -> None:
        """One interval's work: evaluate if this process holds the lease,
        then refresh what is shown. Never raises an Exception."""
        try:
            # One tick at a time in a process (its thread's and one called by
            # hand): two at once would both evaluate from the same instances.
            with self._ticking:
                self._tick()
        except Exception:
            self.failures += 1
            if not self._failing:
                logger.warning("aegis_mw: alert evaluation failed", exc_info=True)
            self._failing = True
        else:
            if self._failing:
                logger.info("aegis_mw: alert evaluation works again")
            self._failing = False

    def _tick(self) -> None:
        now = self.wall()
        self._refresh_config()
        token = self.store.claim(self.holder, now, self.interval * LEASE_INTERVALS)
        disabled = self._read_channels()
        states: dict[str, Any] = {"channel_disabled": disabled}
        states.update(self._read_reports(now))
        policy = NotificationPolicy(
            tuple(self.store.silences(now)), self.mute_windows, self.inhibit_rules
        )
        if token is None:
            self.token = None
            self._show(self.store.instances())
            self.policy = dataclasses.replace(policy, held=self._held(self.shown))
            shown = {(i.rule, i.group): i for i in self.shown}
            self.sender.mutes = (self.policy, self._firing_labels(shown))
            return
        if token != self.token:
            # Taken over (or first): resume from what the last holder stored.
            self._instances = self.store.load()
            self._figures = SlidingFigures(self.reader, self.rules, self.settle)
            self.token = token
        figures = self._figures.collect(now, states)
        result = evaluate(self.rules, self._instances, figures, now, 2 * self.interval)
        changed, removed = changes_between(self._instances, result.instances)
        self.policy = dataclasses.replace(policy, held=self._held(result.instances.values()))
        # Renewed as it commits: the lease outlives a tick that took long.
        renew_until = self.wall() + self.interval * LEASE_INTERVALS
        notices = notices_for(result.transitions, self.channels)
        firing = self._firing_labels(result.instances)
        self.sender.mutes = (self.policy, firing)
        notices += self._followups(result.instances, now, firing, notices)
        notices = self._unmuted(notices, now, firing)
        groupings = {name: channel.grouping for name, channel in self.channels.items()}
        if not self.store.commit(
            self.holder, token, changed, removed, result.transitions, renew_until, notices,
            groupings,
        ):  # fmt: skip
            self.token = None  # fenced out: another process evaluates now
            return
        self._instances = result.instances
        self.health = result.health
        self.evaluations += 1
        self._show(self._instances.values())
        if notices:
            self.sender.wakeup.set()  # delivered now, not at the next poll
        for transition in result.transitions:
            if transition.notify:
                _log(transition)
        on_firing = self.on_firing
        if on_firing is not None:
            for transition in result.transitions:
                # After a failure (the store away), the rest of this tick's
                # firings wait no more: the lease must outlive the tick.
                if transition.kind == FIRING and not self._opened(on_firing, transition):
                    break
        if now - self._pruned_at >= PRUNE_EVERY:
            self._pruned_at = now
            self.store.prune_history(now - self.retention, PRUNE_LIMIT)
            self._give_up_orphans(now)

    def _opened(self, on_firing: Callable[[Transition], object], transition: Transition) -> bool:
        """Tell ``on_firing`` of a firing (an incident opened); its failure is
        logged, never the evaluation's. False when it failed."""
        try:
            on_firing(transition)
        except Exception:
            logger.warning(
                "aegis_mw: opening an incident for alert %s failed", transition.rule, exc_info=True
            )
            return False
        return True

    def _uses_reports(self) -> bool:
        """Whether the processes' reports are needed: a rule over one of
        their inputs (the built-in readiness rule too), or channels (the
        notices of a channel no process has are given up)."""
        return bool(self.channels) or (
            self.reporter is not None and any(rule.input in REPORT_INPUTS for rule in self.rules)
        )

    def _read_reports(self, now: float) -> dict[str, Any]:
        """Write this process's report, read every live process's: the
        report inputs' values (an input's read error, for its rules' health:
        their instances then stay as they were)."""
        self.known_channels = None
        if not self._uses_reports():
            return {}
        report = dict(self.reporter()) if self.reporter is not None else {}
        report["channels"] = sorted(self.channels)
        live_for = LIVE_INTERVALS * self.interval
        try:
            # Kept past the time a live one may be read (a long interval).
            self.store.put_report(self.holder, now, report, max(REPORTS_KEPT, 2 * live_for))
            self._reported = True
        except Exception:  # this process's own is missed once; the others still count
            logger.debug("aegis_mw: this process's health report was not written", exc_info=True)
        try:
            live = self.store.reports(now - live_for)
        except Exception as exc:  # the rules over them report it as their health
            return dict.fromkeys(REPORT_INPUTS, exc)
        state = self._reports.read(live, now)
        self.known_channels = state.channels
        return dict(state.inputs())

    def _held(self, instances: Iterable[Instance]) -> dict[str, str]:
        """The error and latency alerts held back, with why: while an alert
        over ``readiness_failing`` fires, they are its symptoms."""
        if not self.readiness_inhibits:
            return {}
        rules = {rule.name: rule for rule in self.rules}
        sources = sorted(
            f"{i.rule} ({', '.join(f'{k}={v}' for k, v in i.group)})" if i.group else i.rule
            for i in instances
            if i.state == FIRING and i.rule in rules and rules[i.rule].input == "readiness_failing"
        )
        if not sources:
            return {}
        why = f"inhibited by {'; '.join(sources)}"
        return {rule.name: why for rule in self.rules if rule.input in READINESS_INHIBITED}

    def _give_up_orphans(self, now: float) -> None:
        """Pending notices of channels no live process has (removed from the
        settings), an hour old: skipped, so the backlog does not show them
        for ever. Only when every live process said which it has."""
        known = self.known_channels
        if known is None:
            return
        for (channel, state), (_, oldest) in self.store.notice_counts().items():
            if state != "pending" or channel in known or oldest is None:
                continue
            if oldest < now - ORPHAN_SECONDS:
                given_up = self.store.skip_channel(
                    channel, now - ORPHAN_SECONDS, now,
                    "the channel is in no running process's settings",
                )  # fmt: skip
                logger.warning(
                    "aegis_mw: %d notices to channel %r given up: no process of the app has "
                    "that channel any more", given_up, channel,
                )  # fmt: skip

    def _firing_labels(self, instances: Mapping[Key, Instance]) -> list[dict[str, str]]:
        """The labels of every alert firing (the sources inhibit rules look at)."""
        rules = {rule.name: rule for rule in self.rules}
        return [
            alert_labels(rules[i.rule], i.group)
            for i in instances.values()
            if i.state == FIRING and i.rule in rules
        ]

    def _unmuted(
        self, notices: list[Notice], now: float, firing: list[dict[str, str]]
    ) -> list[Notice]:
        """The notices the policy lets through: a firing (or a repeat, a
        flapping notice) that a silence, a channel's mute window or an
        inhibiting alert holds back is not written; a notice that resolves
        always goes where its firing went (an incident is never left open).
        The sender asks the policy again when a row is due (see
        :meth:`AlertSender.held_back`)."""
        kept = []
        for notice in notices:
            channel = self.channels.get(notice.channel) if notice.channel is not None else None
            why = (
                None if channel is None
                else self.policy.why_muted(notice.labels, firing, now, channel.mute_windows)
            )  # fmt: skip
            if why is None:
                kept.append(notice)
            else:
                self.muted += 1
                logger.info(
                    "aegis_mw: alert notice %s to %s held: %s", notice.key, notice.channel, why
                )
        return kept

    def _followups(
        self, instances: Mapping[Key, Instance], now: float, firing: list[dict[str, str]],
        written: Sequence[Notice],
    ) -> list[Notice]:  # fmt: skip
        """For each alert still firing and each channel it goes to: its
        firing, when that channel has none of its episode (a silence or a
        mute window that held it has ended, a channel was added), or a
        repeat when its last notice there is ``repeat_interval`` old; none
        while the policy holds it back."""
        if not self.channels:
            return []
        alerts = {
            instance.announced_episode or instance.episode: instance
            for instance in instances.values()
            if instance.state == FIRING and instance.announced == FIRING
        }
        if not alerts:
            return []
        rules = {rule.name: rule for rule in self.rules}
        rows = {
            (channel, episode): (last, pending, delivered)
            for channel, episode, last, pending, delivered in self.store.episode_notices(
                sorted(alerts)
            )
        }
        rows.update(((n.channel or "", n.episode), (now, 1, 0)) for n in written)
        out: list[Notice] = []
        for episode, instance in sorted(alerts.items()):
            rule = rules.get(instance.rule)
            if rule is None:
                continue
            labels = alert_labels(rule, instance.group)
            for name, channel in self.channels.items():
                row = rows.get((name, episode))
                if row is None:
                    kind = FIRING
                else:
                    last, pending, delivered = row
                    if pending or not delivered or now - last < channel.grouping.repeat_interval:
                        continue
                    kind = "repeat"
                if self.policy.why_muted(labels, firing, now, channel.mute_windows):
                    continue
                again = Transition(
                    rule=rule.name, group=instance.group, kind=kind, from_state=FIRING,
                    to_state=FIRING, at=now, value=instance.value, severity=rule.severity,
                    episode=episode, notify=True, labels=labels,
                    annotations=render(rule, instance.group, instance.value),
                )  # fmt: skip
                out += notices_for([again], {name: channel})
        return out

    def _read_channels(self) -> dict[tuple[tuple[str, str], ...], float] | Exception:
        """Each channel's ``channel_disabled`` value (1 when disabled with
        the settings it has here); refreshes :attr:`channel_view`."""
        if not self.channels:
            return {}
        try:
            states = self.store.channel_states()
            counts = self.store.notice_counts()
        except Exception as exc:  # the rules over it report it as their health
            return exc
        fingerprints = self.sender.fingerprints
        view = []
        values: dict[tuple[tuple[str, str], ...], float] = {}
        for name in sorted(self.channels):
            state: ChannelState | None = states.get(name)
            if state is not None and state.fingerprint != fingerprints[name]:
                state = None  # disabled with other settings: these are tried
            values[(("channel", name),)] = 0.0 if state is None else 1.0
            rows = {kind: counts.get((name, kind), (0, None)) for kind in NOTICE_STATES}
            view.append({
                "name": name,
                "state": "ok" if state is None else "disabled",
                "reason": None if state is None else state.reason,
                "disabled_at": None if state is None else state.disabled_at,
                "next_probe_at": None if state is None else state.probe_at,
                "notices": {kind: count for kind, (count, _) in rows.items()},
                "oldest_pending_at": rows["pending"][1],
            })  # fmt: skip
        self.channel_view = view
        return values

    # -- what is shown ------------------------------------------------------------
    def _show(self, instances: Iterable[Instance]) -> None:
        ordered = sorted(instances, key=lambda i: (i.rule, i.group))
        self.shown = [i for i in ordered if i.state in SHOWN]
        self.nodata = [i for i in ordered if i.state == NODATA]

    def counts(self) -> dict[tuple[str, str], int]:
        """Alerts shown, by (state, severity), every pair present (0 when
        none), for ``/metrics``; no I/O."""
        severities = {rule.name: rule.severity for rule in self.rules}
        out = dict.fromkeys(((s, v) for s in SHOWN for v in SEVERITIES), 0)
        for instance in self.shown:
            severity = severities.get(instance.rule)
            if severity is not None:
                out[(instance.state, severity)] += 1
        return out

    def view(self) -> list[dict[str, Any]]:
        """The alerts to show (pending and firing), firing and most severe
        first; no I/O (safe on an event loop)."""
        rules = {rule.name: rule for rule in self.rules}
        shown = [(instance, rules.get(instance.rule)) for instance in self.shown]
        shown.sort(key=lambda pair: _order(*pair))
        firing = self._firing_labels({(i.rule, i.group): i for i in self.shown})
        now = self.wall()
        out = []
        for instance, rule in shown:
            view = alert_view(instance, rule)
            # What holds its notices back everywhere (a channel's own mute
            # windows aside): a silence or an inhibiting alert.
            view["muted"] = (
                None if rule is None
                else self.policy.why_muted(alert_labels(rule, instance.group), firing, now, ())
            )  # fmt: skip
            out.append(view)
        return out


#: The states of an outbox row.
NOTICE_STATES = ("pending", "delivered", "failed", "skipped")
_SEVERITY_ORDER = {"critical": 0, "error": 1, "warning": 2, "info": 3}
_STATE_ORDER = {FIRING: 0, PENDING: 1}


def _order(instance: Instance, rule: AlertRule | None) -> tuple[int, int, str]:
    severity = rule.severity if rule is not None else ""
    return (_STATE_ORDER.get(instance.state, 2), _SEVERITY_ORDER.get(severity, 4), instance.rule)


def alert_view(instance: Instance, rule: AlertRule | None) -> dict[str, Any]:
    """One alert as the stream, the dashboard and the API show it."""
    severity = rule.severity if rule is not None else ""
    rendered = render(rule, instance.group, instance.value) if rule is not None else {}
    text = rendered.get("summary", "")
    label = ", ".join(f"{k}={v}" for k, v in instance.group)
    if not text and rule is not None:
        shown = "no data" if instance.value is None else f"{instance.value:.4g}"
        text = f"{rule.input} {shown} {rule.operator} {rule.threshold:g}"
    return {
        "name": instance.rule,
        "state": instance.state,
        "severity": severity,
        "group": dict(instance.group),
        "value": instance.value,
        "since": instance.fired_at if instance.state == FIRING else instance.active_at,
        "episode": instance.episode,
        "flapping": instance.flapping,
        "message": f"{instance.rule}{f' [{label}]' if label else ''} {instance.state}: {text}",
        "annotations": rendered,
    }


def _shown(instances: Any) -> list[Instance]:
    return sorted((i for i in instances if i.state in SHOWN), key=lambda i: (i.rule, i.group))


def _log(transition: Any) -> None:
    level = logging.WARNING if transition.to_state == FIRING else logging.INFO
    labels = ",".join(f"{k}={v}" for k, v in transition.labels.items())
    value = "no data" if transition.value is None else f"{transition.value:.4g}"
    logger.log(
        level, "alert %s %s (%s) value=%s episode=%s %s",
        transition.rule, transition.kind, labels, value, transition.episode,
        transition.annotations.get("summary", ""),
    )  # fmt: skip


def _run(ref: weakref.ReferenceType[AlertService], stop: threading.Event, interval: float) -> None:
    """The thread: holds the service weakly, so an app dropped without
    shutdown lets its service go and the thread ends."""
    while True:
        service = ref()
        if service is None:
            return
        started = time.monotonic()
        service.tick()
        del service
        # Ticks start an interval apart, however long one took.
        if stop.wait(max(0.0, interval - (time.monotonic() - started))):
            return
