"""The app config: owns the pipeline, registers the configuration check."""

from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.core import checks

from ...aegis import Aegis
from ...core.errors import ConfigError
from ...core.settings import AegisSettings


def options() -> dict[str, Any]:
    value = getattr(settings, "AEGIS", {})
    if not isinstance(value, dict):
        raise ConfigError("AEGIS", value, "a dict of aegis_mw options")
    return dict(value)


def check_options(**kwargs: Any) -> list[checks.CheckMessage]:
    """``settings.AEGIS`` validated as at start: an error names the option."""
    try:
        AegisSettings.load(**options())
    except ConfigError as exc:
        return [
            checks.Error(str(exc), hint="see aegis_mw's docs/configuration.md", id="aegis_mw.E001")
        ]
    return []


class AegisAppConfig(AppConfig):
    name = "aegis_mw.contrib.django"
    label = "aegis_mw"
    verbose_name = "aegis_mw"

    def ready(self) -> None:
        checks.register(check_options, checks.Tags.compatibility)
        self._pipeline: Aegis | None = None

    @property
    def pipeline(self) -> Aegis:
        """This process's pipeline, built from ``settings.AEGIS`` on first use."""
        if self._pipeline is None:
            self._pipeline = Aegis(**options())
        return self._pipeline
