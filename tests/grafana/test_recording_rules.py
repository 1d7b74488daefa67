"""The recording rules as a file: ``promtool check rules`` passes them (under
the default namespace and another), their names follow Prometheus's
``level:metric:operations`` convention, and they read only what the dashboard
reads. That Prometheus records every one of them from a real app's series is
in ``test_prometheus_dashboard.py``."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from aegis_mw.grafana import exported, with_namespace
from tests.grafana.dashboards import dashboard, targets
from tests.servers import prometheus_tool

TIMEOUT = 60


def rules(text: str) -> list[dict[str, Any]]:
    [group] = yaml.safe_load(text)["groups"]
    assert group["name"] == "aegis_mw.http"
    found: list[dict[str, Any]] = group["rules"]
    return found


@pytest.mark.parametrize("namespace", ["aegis", "shop_api"])
def test_promtool_checks_the_rules(tmp_path: Path, namespace: str) -> None:
    rule_file = tmp_path / "rules.yml"
    rule_file.write_text(exported("recording-rules", namespace=namespace), encoding="utf-8")
    checked = subprocess.run(
        [prometheus_tool("promtool"), "check", "rules", str(rule_file)],
        capture_output=True, text=True, timeout=TIMEOUT, check=False,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 15 rules found" in checked.stdout


def test_names_follow_the_convention() -> None:
    for rule in rules(exported("recording-rules")):
        level, metric, operations = rule["record"].split(":")
        assert set(level.split("_")) <= {"job", "route", "status", "le"}, rule["record"]
        assert metric.startswith("aegis_http_"), rule["record"]
        assert re.fullmatch(r"(rate|ratio_rate|quantile|mean)5m", operations), rule["record"]
        assert level.startswith("job"), rule["record"]  # per app, instances added up
        # The labels kept are those the level names (le: a percentile's buckets).
        by = re.search(r"sum by \(([^)]*)\)", rule["expr"])
        if by:
            kept = set(by.group(1).replace(" ", "").split(","))
            assert kept - {"le"} == set(level.split("_")) - {"le"}, rule["record"]
        # Over 5 minutes: of the raw series, or of a recorded 5-minute rate.
        assert "[5m]" in rule["expr"] or ":rate5m" in rule["expr"], rule["record"]
        if operations == "quantile5m":
            assert rule["labels"]["quantile"] in ("0.5", "0.95", "0.99")
            assert f"histogram_quantile({rule['labels']['quantile']}," in rule["expr"]


def test_the_rules_read_the_series_the_dashboard_reads() -> None:
    series = re.compile(r"\baegis_[a-z_]+\b")
    dashboard_reads = {
        name
        for _, target in targets(dashboard("prometheus-dashboard"))
        for name in series.findall(target["expr"])
    }
    rule_reads = {
        name for rule in rules(exported("recording-rules")) for name in series.findall(rule["expr"])
    }
    assert rule_reads == {
        "aegis_http_requests_total",
        "aegis_http_request_duration_seconds_bucket",
        "aegis_http_request_duration_seconds_sum",
        "aegis_http_request_duration_seconds_count",
        "aegis_http_time_to_first_byte_seconds_bucket",
    }
    assert rule_reads <= dashboard_reads


def test_a_namespace_renames_the_series_and_nothing_else() -> None:
    for name in ("prometheus-dashboard", "recording-rules"):
        text = exported(name, namespace="shop_api")
        assert text == with_namespace(exported(name), "shop_api")
        assert "aegis_http" not in text and "shop_api_http_requests_total" in text
        assert "aegis_mw" in text  # the package keeps its name
        assert re.findall(r"\baegis_", text.replace("aegis_mw", "")) == []
    renamed = rules(exported("recording-rules", namespace="shop_api"))
    assert renamed[0]["record"] == "job_route_status:shop_api_http_requests:rate5m"


def test_bad_namespaces_and_a_namespace_for_tables_are_refused() -> None:
    with pytest.raises(ValueError, match="not a metric name prefix"):
        exported("recording-rules", namespace="shop-api")
    with pytest.raises(ValueError, match="has no metric namespace"):
        exported("postgresql-dashboard", namespace="shop")
    with pytest.raises(ValueError, match="unknown export"):
        exported("kibana-dashboard")
