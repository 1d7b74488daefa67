"""Errors raised at start when configuration is wrong."""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A setting is invalid; the message names the option and what is allowed."""

    def __init__(self, option: str, value: Any, allowed: str, source: str = "") -> None:
        self.option = option
        self.value = value
        self.allowed = allowed
        self.source = source
        where = f" (from {source})" if source else ""
        super().__init__(f"aegis_mw option {option!r}{where} = {value!r} is invalid: {allowed}")
