"""The documentation cannot drift from the code: the README's quick starts are the files a test
runs, every relative link points at a file that exists, and the configuration reference is
generated from the settings object and lists every option."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from aegis_mw.core.settings import ENV_PREFIX, AegisSettings

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
QUICKSTART = ROOT / "examples" / "quickstart"

#: README section heading -> the file its quick start must equal, and how it is run.
QUICK_STARTS = {
    "FastAPI": ("fastapi_main.py", "uvicorn main:app"),
    "Starlette": ("starlette_main.py", "uvicorn main:app"),
    "Flask": ("flask_main.py", "flask --app main run"),
}

_FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_INLINE_CODE = re.compile(r"`[^`\n]*`")


def _sections(text: str) -> dict[str, str]:
    """The README's `###` sections by heading (each up to the next heading)."""
    parts = re.split(r"^(#{2,3} .*)$", text, flags=re.MULTILINE)
    return {
        heading.lstrip("#").strip(): body
        for heading, body in zip(parts[1::2], parts[2::2], strict=True)
    }


def _python_blocks(text: str) -> list[str]:
    return [body for lang, body in _FENCE.findall(text) if lang == "python"]


@pytest.mark.parametrize("framework", sorted(QUICK_STARTS))
def test_readme_quick_start_is_the_example_file(framework: str) -> None:
    filename, command = QUICK_STARTS[framework]
    section = _sections(README.read_text(encoding="utf-8"))[framework]
    blocks = _python_blocks(section)
    assert len(blocks) == 1, f"the {framework} quick start should be one python block"
    expected = (QUICKSTART / filename).read_text(encoding="utf-8")
    # Byte for byte: the file a user saves is the file the fresh-venv test runs.
    assert blocks[0] == expected, f"README's {framework} quick start differs from {filename}"
    assert "save as `main.py`" in section
    assert f"`{command}`" in section
    assert f"pip install 'aegis_mw[{framework.lower()}]'" in section


def test_readme_django_quick_start_points_at_the_example_project() -> None:
    section = _sections(README.read_text(encoding="utf-8"))["Django"]
    (settings,) = _python_blocks(section)
    assert '"aegis_mw.contrib.django"' in settings
    assert '"aegis_mw.contrib.django.AegisMiddleware"' in settings
    assert "AEGIS = {" in settings
    assert "(examples/django_project)" in section
    assert (ROOT / "examples" / "django_project").is_dir()


def test_readme_stays_short() -> None:
    assert len(README.read_text(encoding="utf-8").splitlines()) < 200


def _markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


def _relative_links(text: str) -> list[str]:
    text = _FENCE.sub("", text)
    text = _INLINE_CODE.sub("", text)
    links = []
    for target in _LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL (https:, mailto:) or an anchor on the same page
        links.append(target)
    return links


@pytest.mark.parametrize("page", _markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_at_existing_files(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    missing = [
        link for link in _relative_links(text) if not (page.parent / link.split("#", 1)[0]).exists()
    ]
    assert not missing, f"{page.relative_to(ROOT)} links to missing files: {missing}"


def test_the_link_checker_sees_links() -> None:
    links = _relative_links(README.read_text(encoding="utf-8"))
    assert "docs/configuration.md" in links
    assert "docs/img/dashboard.png" in links


def test_dashboard_screenshot_is_small() -> None:
    image = DOCS / "img" / "dashboard.png"
    assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert image.stat().st_size < 200_000


# The configuration reference -------------------------------------------------------------


def _options_hook() -> ModuleType:
    pytest.importorskip("mkdocs")
    spec = importlib.util.spec_from_file_location(
        "aegis_docs_options", DOCS / "hooks" / "options.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Page:
    def __init__(self, src_uri: str) -> None:
        self.file = type("File", (), {"src_uri": src_uri})()


def _render(hook: ModuleType, markdown: str, src_uri: str = "configuration.md") -> Any:
    return hook.on_page_markdown(markdown, page=_Page(src_uri), config={}, files=[])


def test_mkdocs_runs_the_options_hook() -> None:
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    assert re.search(r"^hooks:\n\s+- docs/hooks/options\.py$", config, re.MULTILINE)
    page = (DOCS / "configuration.md").read_text(encoding="utf-8")
    assert page.count(_options_hook().MARKER) == 1


def test_the_options_table_lists_every_option() -> None:
    hook = _options_hook()
    page = (DOCS / "configuration.md").read_text(encoding="utf-8")
    rendered = _render(hook, page)
    assert hook.MARKER not in rendered
    rows = [line for line in rendered.splitlines() if line.startswith("| <span id=")]
    names = AegisSettings.option_names()
    assert len(rows) == len(names)
    for name, row in zip(names, rows, strict=True):
        assert f"`{name}`<br>`{ENV_PREFIX}{name.upper()}`" in row
        assert row.count(" | ") == 3, row  # option and variable, default, allowed, what it does


def test_the_options_table_shows_defaults_and_allowed_values() -> None:
    table = _options_hook().options_table()
    rows = {
        line.split("`", 2)[1]: line for line in table.splitlines() if line.startswith("| <span")
    }
    assert "| `sqlite:///aegis.db` |" in rows["sink"]
    assert "| `1` | a number from 0 to 1 |" in rows["sample_rate"]
    assert "| `7d` |" in rows["retention_raw"]
    assert "| `true` |" in rows["speedups"]
    assert "| `/metrics` |" in rows["metrics_path"]
    assert "| none |" in rows["trusted_proxies"]
    assert "(see [Access control](access-control.md))" in rows["access"]


def test_every_option_has_a_description() -> None:
    hook = _options_hook()
    undocumented = [
        name for name in AegisSettings.option_names() if not hook.DESCRIPTIONS.get(name)
    ]
    assert not undocumented, f"add these to DESCRIPTIONS in docs/hooks/options.py: {undocumented}"


def test_the_hook_leaves_other_pages_alone_and_refuses_a_lost_marker() -> None:
    hook = _options_hook()
    assert _render(hook, "# Sinks\n", "sinks.md") == "# Sinks\n"
    from mkdocs.exceptions import PluginError

    with pytest.raises(PluginError, match="marker"):
        _render(hook, "# Configuration\n")
