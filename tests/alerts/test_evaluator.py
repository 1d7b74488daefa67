"""The evaluator's state machine, over timelines of made-up figures."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aegis_mw.alerts import AlertRule, evaluate, render
from aegis_mw.alerts.evaluator import FLAP_START, FLAP_WINDOW, RESOLVED_RETENTION

from .timeline import INTERVAL, START, Timeline, ratio, window

ERRORS: dict[str, Any] = {
    "name": "errors",
    "input": "error_ratio",
    "operator": ">",
    "threshold": 0.05,
}


def rule(**changes: Any) -> AlertRule:
    return AlertRule(**{**ERRORS, **changes})


def test_basic_lifecycle_one_firing_and_one_resolved_notice() -> None:
    r = rule(for_="30s", annotations={"summary": "$rule: $value_percent over $threshold"})
    line = Timeline([r])
    line.step({"errors": ratio(r, 0.01)})
    assert line.state() == "inactive"
    line.step({"errors": ratio(r, 0.10)})
    assert line.state() == "pending"
    line.step({"errors": ratio(r, 0.10)})
    line.step({"errors": ratio(r, 0.10)})
    assert line.state() == "pending"  # 20 s of the 30
    fired = line.step({"errors": ratio(r, 0.10)})
    assert line.state() == "firing"
    assert [(t.kind, t.from_state, t.notify) for t in fired] == [("firing", "pending", True)]
    assert fired[0].annotations == {"summary": "errors: 10 % over 0.05"}
    assert fired[0].labels == {"alertname": "errors", "severity": "warning"}
    for _ in range(5):
        line.step({"errors": ratio(r, 0.10)})
    resolved = line.step({"errors": ratio(r, 0.0)})
    assert line.state() == "resolved"
    assert resolved[0].episode == fired[0].episode != ""
    line.step({"errors": ratio(r, 0.0)})
    assert line.notices() == [("firing", "firing"), ("resolved", "resolved")]


def test_pending_cancelled_sends_nothing() -> None:
    r = rule(for_="1m")
    line = Timeline([r])
    for value in (0.2, 0.2, 0.2, 0.0, 0.2, 0.0):
        line.step({"errors": ratio(r, value)})
    assert line.state() == "inactive"
    assert line.notices() == []
    assert [t.kind for t in line.transitions] == ["pending", "inactive", "pending", "inactive"]


def test_without_for_it_fires_at_the_first_breach() -> None:
    r = rule()
    line = Timeline([r])
    assert [t.kind for t in line.step({"errors": ratio(r, 0.5)})] == ["firing"]


def test_a_long_gap_between_evaluations_never_makes_it_fire_early() -> None:
    """Restart or outage: an hour between two evaluations counts as at most
    ``max_step`` of pending time."""
    r = rule(for_="1m")
    line = Timeline([r], max_step=20.0)
    line.step({"errors": ratio(r, 0.5)})
    line.step({"errors": ratio(r, 0.5)}, after=3600)
    assert line.state() == "pending"
    assert line.instances[("errors", ())].pending_for == 20.0
    for _ in range(3):
        line.step({"errors": ratio(r, 0.5)})
    assert line.state() == "pending"  # 50 s of the 60
    line.step({"errors": ratio(r, 0.5)})
    assert line.state() == "firing"


def test_a_clock_stepped_back_counts_as_no_time() -> None:
    r = rule(for_="20s")
    line = Timeline([r])
    line.step({"errors": ratio(r, 0.5)})
    line.step({"errors": ratio(r, 0.5)}, after=-300)
    assert line.instances[("errors", ())].pending_for == 0.0
    line.step({"errors": ratio(r, 0.5)})
    line.step({"errors": ratio(r, 0.5)})
    assert line.state() == "firing"


def test_keep_firing_for_holds_a_firing_alert_through_short_clears() -> None:
    r = rule(keep_firing_for="30s")
    line = Timeline([r])
    line.step({"errors": ratio(r, 0.5)})
    for value in (0.0, 0.0, 0.5, 0.0, 0.0, 0.0):
        line.step({"errors": ratio(r, value)})
        assert line.state() == "firing"
    line.step({"errors": ratio(r, 0.0)})  # clear for 30 s
    assert line.state() == "resolved"
    assert line.notices() == [("firing", "firing"), ("resolved", "resolved")]


def test_a_resolve_threshold_is_hysteresis_by_value() -> None:
    r = rule(resolve_threshold=0.02)
    line = Timeline([r])
    for value in (0.06, 0.04, 0.03, 0.021):
        line.step({"errors": ratio(r, value)})
        assert line.state() == "firing"
    line.step({"errors": ratio(r, 0.02)})
    assert line.state() == "resolved"
    line.step({"errors": ratio(r, 0.04)})  # below the firing threshold: stays resolved
    assert line.state() == "resolved"
    assert line.notices() == [("firing", "firing"), ("resolved", "resolved")]


def test_no_data_below_min_requests_never_pages_and_never_resolves() -> None:
    r = rule(min_requests=20)
    line = Timeline([r])
    line.step({"errors": {(): window(r, 19, 19)}})  # 100 % of 19 requests: no data
    assert line.state() == "nodata" and line.notices() == []
    line.step({"errors": {(): window(r, 20, 2)}})
    assert line.state() == "firing"
    line.step({"errors": {(): window(r, 0, 0)}})  # traffic stopped: no proof of recovery
    assert line.state() == "firing"
    assert line.instances[("errors", ())].value is None
    line.step({"errors": {(): window(r, 100, 0)}})
    assert line.state() == "resolved"
    assert line.notices() == [("firing", "firing"), ("resolved", "resolved")]


def test_no_data_cancels_a_pending_alert() -> None:
    r = rule(for_="30s")
    line = Timeline([r])
    line.step({"errors": ratio(r, 0.5)})
    line.step({"errors": ratio(r, 0.5)})
    line.step({"errors": ratio(r, None)})
    assert line.state() == "nodata"
    line.step({"errors": ratio(r, 0.5)})
    assert line.state() == "pending"
    assert line.instances[("errors", ())].pending_for == 0.0


@pytest.mark.parametrize(
    ("policy", "expected"),
    [("ok", "resolved"), ("alerting", "firing"), ("keep_last", "firing"), ("nodata", "firing")],
)
def test_no_data_policies_for_a_firing_alert(policy: str, expected: str) -> None:
    r = rule(no_data=policy)
    line = Timeline([r])
    line.step({"errors": ratio(r, 0.5)})
    line.step({"errors": ratio(r, None)})
    assert line.state() == expected


@pytest.mark.parametrize(
    ("policy", "expected"),
    [("ok", "inactive"), ("alerting", "firing"), ("keep_last", "inactive"), ("nodata", "nodata")],
)
def test_no_data_policies_for_a_quiet_rule(policy: str, expected: str) -> None:
    r = rule(no_data=policy)
    line = Timeline([r])
    line.step({"errors": ratio(r, 0.0)})
    line.step({"errors": ratio(r, None)})
    assert line.state() == expected


def test_rates_are_data_at_any_count() -> None:
    r = AlertRule(name="quiet", input="request_rate", operator="<", threshold=1.0, window="1m")
    line = Timeline([r])
    line.step({"quiet": {(): window(r, 0)}})
    assert line.state("quiet") == "firing"
    assert line.instances[("quiet", ())].value == 0.0
    line.step({"quiet": {(): window(r, 120)}})  # 2 requests a second
    assert line.state("quiet") == "resolved"


def test_latency_rule_reads_the_histogram() -> None:
    r = AlertRule(name="slow", input="latency_p99_ms", operator=">", threshold=500)
    line = Timeline([r])
    line.step({"slow": {(): window(r, 100, 0, slow_ms=480)}})
    assert line.state("slow") == "inactive"
    line.step({"slow": {(): window(r, 100, 0, slow_ms=900)}})
    assert line.state("slow") == "firing"
    assert line.instances[("slow", ())].value == 900.0  # clamped to the observed max


def test_flapping_is_reported_once_instead_of_a_storm() -> None:
    r = rule()
    line = Timeline([r])
    for _ in range(30):  # fire and resolve at every evaluation for 10 minutes
        line.step({"errors": ratio(r, 0.5)})
        line.step({"errors": ratio(r, 0.0)})
    notices = line.notices()
    assert notices[: FLAP_START - 1] == [("firing", "firing"), ("resolved", "resolved")] * 2 + [
        ("firing", "firing")
    ]
    assert notices[FLAP_START - 1 :] == [("flapping", "resolved")]
    assert line.instances[("errors", ())].flapping
    # Quiet: once the changes fall out of the window, one notice says where it
    # settled (inactive: the resolved instance outlived its retention).
    for _ in range(int(FLAP_WINDOW / INTERVAL)):
        line.step({"errors": ratio(r, 0.0)})
    assert line.notices()[-1] == ("flapping_ended", "inactive")
    assert sum(kind == "flapping_ended" for kind, _ in line.notices()) == 1
    assert not line.instances[("errors", ())].flapping
    line.step({"errors": ratio(r, 0.5)})
    assert line.notices()[-1] == ("firing", "firing")


def test_flapping_that_settles_firing_announces_it() -> None:
    r = rule()
    line = Timeline([r])
    for _ in range(4):
        line.step({"errors": ratio(r, 0.5)})
        line.step({"errors": ratio(r, 0.0)})
    assert line.instances[("errors", ())].flapping
    for _ in range(int(FLAP_WINDOW / INTERVAL) + 1):
        line.step({"errors": ratio(r, 0.5)})
    assert line.notices()[-1] == ("flapping_ended", "firing")
    line.step({"errors": ratio(r, 0.0)})
    assert line.notices()[-1] == ("resolved", "resolved")


def _flap(line: Timeline, r: AlertRule, cycles: int = 4, figures: Any = None) -> None:
    for _ in range(cycles):
        line.step({"errors": figures(0.5) if figures else ratio(r, 0.5)})
        line.step({"errors": figures(0.0) if figures else ratio(r, 0.0)})


def test_flapping_that_settles_firing_keeps_the_announced_episode() -> None:
    """Fired (announced), flapped (episodes fire and resolve unannounced),
    settled firing: receivers still hold the first episode, and its resolve
    names it."""
    r = rule()
    line = Timeline([r])
    _flap(line, r)
    announced = [t.episode for t in line.transitions if t.notify and t.kind == "firing"]
    assert len(announced) == 3  # the flapping began at the third resolve
    for _ in range(int(FLAP_WINDOW / INTERVAL) + 1):
        line.step({"errors": ratio(r, 0.5)})
    [ended] = [t for t in line.transitions if t.kind == "flapping_ended"]
    assert (ended.to_state, ended.notify, ended.episode) == ("firing", True, announced[-1])
    resolved = line.step({"errors": ratio(r, 0.0)})
    assert [(t.kind, t.notify, t.episode) for t in resolved] == [("resolved", True, announced[-1])]


def test_a_grouped_instance_forgotten_while_flapping_is_resolved_first() -> None:
    r = rule(group_by=("route",))
    pay = (("route", "/pay"),)
    line = Timeline([r])
    _flap(line, r, figures=lambda value: {pay: window(r, 100, round(value * 100))})
    open_episode = ""
    for t in line.transitions:
        if t.notify:
            open_episode = told_episode(t, open_episode)
    assert open_episode  # the last announced firing was never resolved (flapping)
    seen = len(line.transitions)
    for _ in range(int(RESOLVED_RETENTION / INTERVAL) + 2):
        line.step({"errors": {pay: window(r, 100, 0)}})
    # Forgotten after the retention (a resolve for what receivers hold), then
    # met again as a new instance: the route still has traffic.
    fresh = line.instances[("errors", pay)]
    assert (fresh.state, fresh.flapping, fresh.announced) == ("inactive", False, None)
    for t in line.transitions[seen:]:
        if t.notify:
            open_episode = told_episode(t, open_episode)
    assert open_episode == ""


def test_flapping_that_begins_with_a_firing_resolves_the_episode_it_opened() -> None:
    """Changes spread over the hour: the sixth is a firing, so the flapping
    notice fires, and receivers open its episode. It fires again unannounced
    (another episode) and settles resolved: the notice that ends the flapping
    resolves the episode receivers hold, not the latest one."""
    r = rule()
    line = Timeline([r])
    for value, after in ((0.5, 10), (0.0, 600), (0.5, 900), (0.0, 500), (0.5, 1000), (0.0, 700)):
        line.step({"errors": ratio(r, value)}, after)
    assert not line.instances[("errors", ())].flapping  # the first firing left the hour
    [flapping] = line.step({"errors": ratio(r, 0.5)}, 200)[:1]
    assert (flapping.kind, flapping.to_state, flapping.notify) == ("flapping", "firing", True)
    for value in (0.0, 0.5, 0.0):  # a firing of another episode, and resolves: unannounced
        assert [t.notify for t in line.step({"errors": ratio(r, value)})] == [False]
    assert line.transitions[-2].episode != flapping.episode
    for _ in range(int(FLAP_WINDOW / INTERVAL) + 1):
        line.step({"errors": ratio(r, 0.0)})
    open_episode = ""
    for t in line.transitions:
        if t.notify:
            open_episode = told_episode(t, open_episode)
    assert line.notices()[-1] == ("flapping_ended", "inactive")
    assert line.transitions[-1].episode == flapping.episode
    assert open_episode == ""


def test_a_forgotten_instance_resolves_with_the_labels_it_fired_with() -> None:
    """A grouped alert whose route goes quiet for an hour is forgotten; its
    resolve carries the firing's labels (severity, the rule's own), so a
    channel grouping by them puts it with its firing."""
    r = rule(group_by=("route",), labels={"team": "pay"}, severity="critical")
    pay = (("route", "/pay"),)
    line = Timeline([r])
    [fired] = line.step({"errors": {pay: window(r, 100, 50)}})
    for _ in range(int(3600 / INTERVAL) + 2):
        line.step({"errors": {}})
    [resolved] = [t for t in line.transitions if t.kind == "resolved"]
    assert resolved.annotations["summary"].startswith("resolved: no requests")
    assert resolved.labels == fired.labels == {
        "alertname": "errors", "severity": "critical", "team": "pay", "route": "/pay"
    }  # fmt: skip
    assert resolved.severity == "critical"


def test_a_rule_regrouped_while_firing_resolves_the_old_instance() -> None:
    r = rule()
    line = Timeline([r])
    line.step({"errors": ratio(r, 0.5)})
    line.rules = [rule(group_by=("route",))]
    changes = line.step({"errors": {(("route", "/a"),): window(r, 100, 0)}})
    assert [(t.group, t.kind, t.notify) for t in changes] == [((), "resolved", True)]
    assert changes[0].annotations == {"summary": "resolved: the rule's grouping changed"}
    assert ("errors", ()) not in line.instances


def test_a_firing_group_without_traffic_resolves_after_an_hour() -> None:
    r = rule(group_by=("route",))
    gone = (("route", "/gone"),)
    line = Timeline([r])
    line.step({"errors": {gone: window(r, 100, 50)}})
    for _ in range(int(3600 / INTERVAL) - 1):
        line.step({"errors": {}})
        assert line.state("errors", gone) == "firing"  # silence is no proof of recovery
    changes = line.step({"errors": {}})
    assert [(t.kind, t.notify) for t in changes] == [("resolved", True)]
    assert line.state("errors", gone) == "absent"


def test_keep_last_keeps_a_value_inside_the_hysteresis_band() -> None:
    r = rule(resolve_threshold=0.02, no_data="keep_last")
    line = Timeline([r])
    for value in (0.10, 0.03, None, None):
        line.step({"errors": ratio(r, value)})
        assert line.state() == "firing"
    line.step({"errors": ratio(r, 0.01)})
    assert line.state() == "resolved"


def test_an_evaluation_error_changes_nothing() -> None:
    r = rule(for_="20s")
    line = Timeline([r])
    line.step({"errors": ratio(r, 0.5)})
    line.step({"errors": ratio(r, 0.5)})
    before = dict(line.instances)
    assert line.step({"errors": OSError("database is locked")}) == []
    assert line.instances == before
    assert line.health == {"errors": "OSError: database is locked"}
    line.step({"errors": ratio(r, 0.5)})
    assert line.state() == "firing" and line.health == {"errors": ""}


def test_a_removed_rule_resolves_what_it_fired() -> None:
    r, other = rule(), rule(name="other")
    line = Timeline([r, other])
    line.step({"errors": ratio(r, 0.5), "other": ratio(other, 0.0)})
    line.rules = [other]
    gone = line.step({"other": ratio(other, 0.0)})
    assert [(t.rule, t.kind, t.notify) for t in gone] == [("errors", "resolved", True)]
    assert ("errors", ()) not in line.instances


def test_a_rule_edited_while_firing_keeps_its_episode() -> None:
    r = rule()
    line = Timeline([r])
    line.step({"errors": ratio(r, 0.5)})
    episode = line.instances[("errors", ())].episode
    line.rules = [rule(threshold=0.6)]
    line.step({"errors": ratio(r, 0.5)})
    assert line.state() == "resolved"
    assert line.transitions[-1].episode == episode
    assert line.notices() == [("firing", "firing"), ("resolved", "resolved")]


def test_resolved_instances_are_forgotten_after_the_retention() -> None:
    r = rule(group_by=("route",))
    line = Timeline([r])
    a, b = (("route", "/a"),), (("route", "/b"),)
    line.step({"errors": {a: window(r, 100, 50), b: window(r, 100, 0)}})
    assert (line.state("errors", a), line.state("errors", b)) == ("firing", "inactive")
    line.step({"errors": {a: window(r, 100, 0)}})  # /b had no traffic: forgotten
    assert (line.state("errors", a), line.state("errors", b)) == ("resolved", "absent")
    line.step({"errors": {a: window(r, 100, 0)}}, after=RESOLVED_RETENTION)
    assert line.state("errors", a) == "absent"


def test_grouped_instances_carry_their_labels() -> None:
    r = rule(
        group_by=("route",), labels={"team": "shop"}, annotations={"summary": "$route: $value"}
    )
    line = Timeline([r])
    fired = line.step({"errors": {(("route", "/pay"),): window(r, 100, 25)}})
    assert fired[0].labels == {
        "alertname": "errors", "severity": "warning", "team": "shop", "route": "/pay",
    }  # fmt: skip
    assert fired[0].annotations == {"summary": "/pay: 0.25"}


def test_templates_cannot_reach_into_objects() -> None:
    r = rule(annotations={"summary": "{value.__class__} ${value.__class__} $unknown $$"})
    assert render(r, (), 0.5) == {"summary": "{value.__class__} ${value.__class__} $unknown $"}


def test_evaluation_is_deterministic() -> None:
    r = rule(group_by=("route",))
    figures = {"errors": {(("route", f"/r{n}"),): window(r, 100, n) for n in range(20)}}
    first = evaluate([r], {}, figures, START, 20.0)
    second = evaluate([r], {}, figures, START, 20.0)
    assert first == second
    assert [t.group for t in first.transitions] == sorted(t.group for t in first.transitions)


def told_episode(t: Any, open_episode: str) -> str:
    """What a receiver that deduplicates by episode holds open after a notice:
    a firing opens one (none may be open), a resolve closes the open one (and
    must name it); a flapping notice that fires opens its episode, and a
    flapping_ended notice does whichever its state says."""
    if t.to_state == "firing":
        assert open_episode in ("", t.episode), (open_episode, t)
        return str(t.episode)
    if t.kind == "resolved" or (t.kind == "flapping_ended" and open_episode):
        assert t.episode == open_episode, (open_episode, t)
        return ""
    return open_episode


# -- properties over random timelines -------------------------------------------------
STEP = st.one_of(
    st.tuples(st.sampled_from(["value"]), st.sampled_from([0.0, 0.01, 0.04, 0.06, 0.2, 1.0])),
    st.tuples(st.just("nodata"), st.none()),
    st.tuples(st.just("error"), st.none()),
)
RULES = st.builds(
    rule,
    for_=st.sampled_from([0, 10, 30, 120]),
    keep_firing_for=st.sampled_from([0, 20, 60]),
    resolve_threshold=st.sampled_from([None, 0.03, 0.05]),
    no_data=st.sampled_from(["nodata", "ok", "alerting", "keep_last"]),
)


@settings(max_examples=300, deadline=None)
@given(
    r=RULES,
    steps=st.lists(
        st.tuples(STEP, st.sampled_from([0.0, 5.0, 10.0, 10.0, 60.0, -30.0, 4000.0])), max_size=60
    ),
)
def test_receivers_never_see_a_resolve_without_its_firing_and_nothing_fires_early(
    r: AlertRule, steps: list[tuple[tuple[str, Any], float]]
) -> None:
    line = Timeline([r], max_step=20.0)
    told = "resolved"
    open_episode = ""
    went_back = False
    for (kind, value), after in steps:
        went_back = went_back or after < 0
        before = line.instances.get(("errors", ()))
        if kind == "error":
            assert line.step({"errors": RuntimeError("down")}, after) == []
            assert line.instances.get(("errors", ())) == before
            continue
        changes = line.step({"errors": ratio(r, value if kind == "value" else None)}, after)
        for t in changes:
            if t.notify:
                open_episode = told_episode(t, open_episode)
            if t.kind == "firing" and r.for_ > 0:
                # Never early: a pending alert needs `for` of counted breaching time,
                # and counted time never exceeds the clock's.
                assert before is not None and before.state == "pending"
                assert before.pending_for + 20.0 >= r.for_
                if not went_back:  # a clock stepped back counts as no time
                    assert before.active_at is not None
                    assert t.at - before.active_at >= r.for_
            if not t.notify:
                continue
            if t.kind == "firing":
                assert told != "firing"
                told = "firing"
            elif t.kind == "resolved":
                assert told == "firing"
                told = "resolved"
            elif t.kind == "flapping_ended":
                told = "firing" if t.to_state == "firing" else "resolved"
            elif t.kind == "flapping" and t.to_state == "firing":
                told = "firing"
        instance = line.instances[("errors", ())]
        if not instance.flapping:
            # Outside flapping, receivers hold the truth about firing, and
            # the episode they hold open is the instance's.
            assert (told == "firing") == (instance.state == "firing")
            assert open_episode == (instance.episode if told == "firing" else "")
