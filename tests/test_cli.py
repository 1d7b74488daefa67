"""``aegis-mw`` itself: its version and each command's own help."""

from __future__ import annotations

from importlib.metadata import version

import pytest

import aegis_mw
from aegis_mw.cli import main


def test_version_is_the_installed_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"aegis-mw {aegis_mw.__version__}\n"
    assert aegis_mw.__version__ == version("aegis_mw")


@pytest.mark.parametrize(
    ("command", "default"), [("demo", "aegis-demo.db"), ("query", "sqlite:///aegis.db")]
)
def test_each_command_has_help_showing_the_default_db(
    command: str, default: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: aegis-mw {command}")
    # The --db entry (to the next option) names its default.
    entry = text[text.index("  --db") :]
    entry = entry[: entry.index("\n  -", 1)] if "\n  -" in entry[1:] else entry
    assert default in entry.replace("\n", " ")
