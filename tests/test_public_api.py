"""The public surface is small, sorted and importable (after httpx's test of the same)."""

from __future__ import annotations

import aegis_mw
import aegis_mw.testing


def test_all_is_sorted_and_complete() -> None:
    public = [name for name in dir(aegis_mw) if not name.startswith("_")]
    exported = [name for name in aegis_mw.__all__ if not name.startswith("__")]
    assert exported == sorted(exported)
    # Submodules, and the name `from __future__ import annotations` leaves behind.
    modules = {
        "access", "aegis", "alerts", "alerts_cli", "alerts_dry_run_cli", "asgi", "cli", "cli_args", "core", "demo", "endpoints", "events_cli", "export_cli", "exposition", "grafana", "health",
        "incidents", "incidents_cli",
        "history", "query_cli", "realtime", "silence_cli", "speedups", "transports", "wsgi",
        "contrib",
        "sinks",
        "testing",
        "types", "annotations",
    }  # fmt: skip
    assert sorted(set(public) - modules) == exported


def test_every_export_resolves() -> None:
    for name in [*aegis_mw.__all__, *aegis_mw.testing.__all__]:
        module = aegis_mw if name in aegis_mw.__all__ else aegis_mw.testing
        assert getattr(module, name) is not None, name


def test_version_is_a_string() -> None:
    assert isinstance(aegis_mw.__version__, str) and aegis_mw.__version__
