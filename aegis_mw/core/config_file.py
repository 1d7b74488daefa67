"""Reading the optional settings file named by ``AEGIS_CONFIG`` (TOML or YAML).

Options sit at the top level, or under an ``aegis`` table so they can share a
file with other tools' settings.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from .errors import ConfigError


class ConfigFileError(ConfigError):
    """The settings file is missing, unreadable or not a mapping of options."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__("AEGIS_CONFIG", path, problem, "environment variable AEGIS_CONFIG")


def load_config_file(path: str) -> dict[str, Any]:
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigFileError(path, f"cannot be read: {exc.strerror}") from None
    suffix = file.suffix.lower()
    data: Any
    if suffix == ".toml":
        # Imported here: on Python 3.10 the parser is the third-party tomli,
        # and importing the core must load nothing but the standard library.
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # pragma: no cover - exercised on 3.10 only
            import tomli as tomllib
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigFileError(path, f"not valid TOML: {exc}") from None
    elif suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ImportError(
                "reading a YAML AEGIS_CONFIG needs PyYAML: pip install 'aegis_mw[yaml]'"
            ) from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigFileError(path, f"not valid YAML: {exc}") from None
    else:
        raise ConfigFileError(
            path, f"use a .toml, .yaml or .yml file, not {suffix or 'no suffix'!r}"
        )
    if data is None:
        return {}
    if isinstance(data, dict) and isinstance(data.get("aegis"), dict):
        data = data["aegis"]
    if not isinstance(data, dict):
        raise ConfigFileError(path, "the file must hold a mapping of option names to values")
    return data
