"""Alert rules exported as Prometheus alerting rules, judged by Prometheus's
own tools: ``promtool check rules`` on the rule file, ``promtool test rules``
on the generated lifecycle tests, and the series the expressions read
against a real ``/metrics`` scrape of an app with the middleware."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from prometheus_client.parser import text_string_to_metric_families

from aegis_mw import AegisMiddleware
from aegis_mw.alerts import AlertRule
from aegis_mw.alerts.prometheus_rules import (
    EXPORTED_INPUTS,
    expression,
    go_literal,
    prometheus_rules,
    promtool_tests,
    yaml_text,
)
from tests.conftest import REQUIRE_SERVICES

TIMEOUT = 120


def promtool() -> str:
    """promtool's path; missing: a failure in CI, a skip elsewhere."""
    path = shutil.which("promtool")
    if path is None:
        message = "promtool is not installed (Debian package 'prometheus')"
        if REQUIRE_SERVICES:
            pytest.fail(message)
        pytest.skip(message)
    return path


def run_promtool(*arguments: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *arguments], capture_output=True, text=True, timeout=TIMEOUT, cwd=cwd,
        check=False,
    )  # fmt: skip


#: One rule of every kind the export handles differently.
RULES = [
    AlertRule(
        name="checkout_errors", input="error_ratio", operator=">", threshold=0.05,
        window="5m", for_="2m", route="/checkout", severity="critical", labels={"team": "web"},
        annotations={
            "summary": "$route fails $value_percent of requests",
            "description": "$value > $threshold ($rule, $severity) {{not a template}} $$5 $other",
        },
    ),
    AlertRule(
        name="slow-routes.p99", input="latency_p99_ms", operator=">", threshold=800,
        window="15m", group_by=("route",), annotations={"summary": "$route p99 is ${value} ms"},
    ),
    AlertRule(name="traffic_drop", input="request_rate", operator="<", threshold=1,
              window="10m", for_="5m", annotations={"summary": "$value requests/s"}),
    AlertRule(
        name="errors_by_endpoint", input="error_rate", operator=">", threshold=2, window="1m",
        group_by=("route", "method"), keep_firing_for="5m", for_=30,
        annotations={"summary": "$method $route {$route}: $value/s"},
    ),
    AlertRule(
        name="few_2xx", input="status_2xx_ratio", operator="<", threshold=0.9, window="30s",
        for_="1m", method="get", resolve_threshold=0.95, no_data="alerting", min_requests=50,
    ),
    AlertRule(name="quiet_errors", input="error_rate", operator="<=", threshold=0.5,
              window="5m", group_by=("route",), for_=45),
    AlertRule(name="too_fast", input="latency_p50_ms", operator="<", threshold=10, window="5m",
              for_="1m", min_requests=0),
    AlertRule(name="all_limited", input="rate_limited_ratio", operator=">=", threshold=1.0,
              window="5m", no_data="ok"),
    AlertRule(name="limited", input="rate_limited_rate", operator=">=", threshold=0.2,
              window="2m", for_="1h", group_by=("method",)),
    AlertRule(name="server_errors", input="status_5xx_ratio", operator=">", threshold=0.5,
              window="1h", for_="10m", min_requests=2000, route="/api/{id}"),
]  # fmt: skip


def export(tmp_path: Path, rules: list[AlertRule], **options: Any) -> tuple[Path, Path]:
    rule_file, test_file = tmp_path / "rules.yml", tmp_path / "rules.test.yml"
    rule_file.write_text(prometheus_rules(rules, **options), encoding="utf-8")
    test_file.write_text(promtool_tests(rules, rule_file.name, **options), encoding="utf-8")
    return rule_file, test_file


def test_promtool_checks_and_tests_the_exported_rules(tmp_path: Path) -> None:
    rule_file, test_file = export(tmp_path, RULES)
    checked = run_promtool("check", "rules", rule_file.name, cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(RULES)} rules found" in checked.stdout
    tested = run_promtool("test", "rules", test_file.name, cwd=tmp_path)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    text = test_file.read_text()
    # Every rule has its lifecycle tested: nothing before `for`, the alert after.
    for rule in RULES:
        assert f"  - name: {yaml_text(rule.name)}" in text
    assert text.count("exp_alerts: []") == len(RULES)


def test_a_test_that_expects_the_wrong_labels_fails(tmp_path: Path) -> None:
    """The generated tests are judged: promtool fails one whose alert differs."""
    _, test_file = export(tmp_path, RULES[:1])
    test_file.write_text(test_file.read_text().replace('team: "web"', 'team: "db"'))
    tested = run_promtool("test", "rules", test_file.name, cwd=tmp_path)
    assert tested.returncode != 0
    assert "checkout_errors" in tested.stdout + tested.stderr


def test_expressions() -> None:
    ratio, latency, drop, by_endpoint, few_2xx = (expression(rule) for rule in RULES[:5])
    assert ratio == (
        '(sum(rate(aegis_http_requests_total{route="/checkout",status=~"5.."}[5m]))'
        ' / sum(rate(aegis_http_requests_total{route="/checkout"}[5m])) > 0.05)'
        ' and (sum(rate(aegis_http_requests_total{route="/checkout"}[5m])) * 300 >= 10)'
    )
    assert latency.startswith(
        "(histogram_quantile(0.99, sum by (le, route) "
        "(rate(aegis_http_request_duration_seconds_bucket[15m]))) * 1000 > 800.0)"
    )
    assert latency.endswith(
        "and (sum by (route) (rate(aegis_http_requests_total[15m])) * 900 >= 10)"
    )
    # No series is a rate of 0, which breaches "< 1": filled in.
    assert drop == "(sum(rate(aegis_http_requests_total[10m])) or vector(0)) < 1.0"
    assert by_endpoint == (
        'sum by (route, method) (rate(aegis_http_requests_total{status=~"5.."}[1m])) > 2.0'
    )
    # A method filter as recorded (upper case); the missing numerator of a ratio is 0.
    assert 'method="GET"' in few_2xx and " or sum(rate(" in few_2xx and "* 0)" in few_2xx
    assert "* 30 >= 50" in few_2xx


def test_annotations_and_notes() -> None:
    text = prometheus_rules(RULES)
    assert 'summary: "/checkout fails {{ $value | humanizePercentage }} of requests"' in text
    assert (
        'description: "{{ $value | printf \\"%.4g\\" }} > 0.05 (checkout_errors, critical) '
        '{{ \\"{\\" }}{{ \\"{\\" }}not a template}} $5 $other"'
    ) in text
    assert 'summary: "{{ $labels.route }} p99 is {{ $value | printf \\"%.4g\\" }} ms"' in text
    # A literal { before an action is written so it cannot open one.
    assert (
        'summary: "{{ $labels.method }} {{ $labels.route }} {{ \\"{\\" }}{{ $labels.route }}}'
        in text
    )
    assert "for: 2m\n" in text and "keep_firing_for: 5m\n" in text and "for: 45s\n" in text
    # What PromQL cannot express is said beside the rule, never dropped.
    assert "# few_2xx: resolve_threshold 0.95 is not expressible" in text
    assert "# few_2xx: no_data 'alerting' is not expressible" in text
    assert "# checkout_errors: no_data 'nodata' is not expressible" in text
    assert "# all_limited: no_data" not in text  # 'ok' is what Prometheus does
    assert "# slow-routes.p99: the percentile is interpolated" in text


def test_go_literals() -> None:
    assert go_literal("plain {text}") == "plain {text}"
    assert go_literal("a {{b}}") == 'a {{ "{" }}{{ "{" }}b}}'
    assert go_literal("ends {", action_follows=True) == 'ends {{ "{" }}'


def test_texts_that_need_quoting_survive(tmp_path: Path) -> None:
    rule = AlertRule(
        name="odd:name", input="error_ratio", operator=">", threshold=0.5, window="5m",
        route='/a "quoted" \\ path/{id}', labels={"note": 'tab\there, "q", {{x}}, é, \u2028'},
        annotations={"summary": "line one\nline two: $route \u0085 \x7f"},
    )  # fmt: skip
    rule_file, test_file = export(tmp_path, [rule])
    checked = run_promtool("check", "rules", rule_file.name, cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = run_promtool("test", "rules", test_file.name, cwd=tmp_path)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_a_rule_that_cannot_fire_here_is_noted_and_left_untested(tmp_path: Path) -> None:
    rule = AlertRule(name="never", input="latency_p95_ms", operator=">", threshold=20_000)
    rule_file, test_file = export(tmp_path, [rule])
    assert "# never: the threshold is at or above 10000 ms" in rule_file.read_text()
    tests = test_file.read_text()
    assert "# never: no input series can breach this rule here; untested" in tests
    assert "tests: []" in tests
    assert run_promtool("test", "rules", test_file.name, cwd=tmp_path).returncode == 0


def test_no_rules_is_an_empty_group(tmp_path: Path) -> None:
    rule_file, _ = export(tmp_path, [])
    checked = run_promtool("check", "rules", rule_file.name, cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr


# -- against a real scrape ---------------------------------------------------------------
# A selector: a name, its matchers (whose quoted values may hold braces), a range.
_SERIES = re.compile(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[^"}]|"(?:[^"\\]|\\.)*")*\})?\[')
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)=~?\"")


async def scrape(make_aegis: Any, **options: Any) -> dict[str, set[str]]:
    """Sample name -> label names, from /metrics of a FastAPI app with the
    middleware after some traffic."""
    app = FastAPI()

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> JSONResponse:
        return JSONResponse({}, status_code=500 if item_id == 0 else 200)

    app.add_middleware(AegisMiddleware, aegis=make_aegis(**options))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        for number in range(3):
            await client.get(f"/items/{number}")
        response = await client.get("/metrics")
    assert response.status_code == 200
    seen: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            seen.setdefault(sample.name, set()).update(sample.labels)
    return seen


@pytest.mark.anyio
@pytest.mark.parametrize("namespace", ["aegis", "shop_api"])
async def test_the_expressions_read_series_the_middleware_serves(
    make_aegis: Any, namespace: str
) -> None:
    seen = await scrape(make_aegis, metrics_namespace=namespace)
    rules = [
        AlertRule(name=f"r{n}", input=name, operator=">", threshold=0.5, group_by=("route", "method"),
                  route="/items/{item_id}", method="GET")
        for n, name in enumerate(EXPORTED_INPUTS)
    ]  # fmt: skip
    used: set[str] = set()
    for rule in rules:
        for match in _SERIES.finditer(expression(rule, namespace)):
            name, matchers = match.group(1), match.group(2) or ""
            used.add(name)
            assert name in seen, f"{name} is not on /metrics: {sorted(seen)}"
            labels = set(_MATCHER.findall(matchers)) | set(rule.group_by)
            assert labels <= seen[name], (name, labels, seen[name])
    assert used == {
        f"{namespace}_http_requests_total",
        f"{namespace}_http_request_duration_seconds_bucket",
    }
    assert "le" in seen[f"{namespace}_http_request_duration_seconds_bucket"]
    assert {"route", "method", "status"} <= seen[f"{namespace}_http_requests_total"]


def test_inputs_without_series_on_metrics_are_named_not_exported(tmp_path: Path) -> None:
    from aegis_mw.alerts import INPUTS

    others = [name for name in INPUTS if name not in EXPORTED_INPUTS]
    if not others:
        pytest.skip("every input has its series on /metrics")
    rules = [AlertRule(name="state", input=others[0], operator=">", threshold=0), RULES[0]]
    rule_file, test_file = export(tmp_path, rules)
    text = rule_file.read_text()
    assert f"# state: not exported: its input {others[0]!r}" in text
    assert '- alert: "state"' not in text and '- alert: "checkout_errors"' in text
    assert run_promtool("check", "rules", rule_file.name, cwd=tmp_path).returncode == 0
    assert run_promtool("test", "rules", test_file.name, cwd=tmp_path).returncode == 0


def test_a_week_long_for_is_tested_at_a_longer_evaluation_interval(tmp_path: Path) -> None:
    """At 15 s evaluations a week of `for` is 40,000 evaluations (minutes of
    promtool): the interval grows to keep about a thousand."""
    week = AlertRule(name="week", input="error_ratio", operator=">", threshold=0.05,
                     window="1d", for_="7d", annotations={"summary": "$value_percent"})  # fmt: skip
    _, test_file = export(tmp_path, [week, RULES[3], RULES[2]])
    text = test_file.read_text()
    assert "evaluation_interval: 705s" in text and "interval: 3600s" in text
    tested = run_promtool("test", "rules", test_file.name, cwd=tmp_path)
    assert tested.returncode == 0, tested.stdout + tested.stderr
