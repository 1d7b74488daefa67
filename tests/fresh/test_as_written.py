"""The README's quick starts and the demo, as a new user runs them: a fresh
virtual environment with only the extra the README names beside each (not the
dev extra, which brings WebSocket libraries and the rest), the file saved as
``main.py``, the command the README gives, then the dashboard opened in
headless Chromium from the link the start-up line prints. The page must
connect its WebSocket ("live") and draw the three charts with the traffic.

The package is built once into a wheel and installed from it with the
extra, as ``pip install 'aegis_mw[fastapi]'`` would from an index."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.child_output import ChildOutput
from tests.dashboard.test_browser import PRINTED_LINK, chart_scales, text_of, wait_until
from tests.servers import ROOT, free_port

pytestmark = pytest.mark.slow
INSTALL_TIMEOUT = 600.0
STARTUP_TIMEOUT = 60.0


@dataclass(frozen=True)
class QuickStart:
    extra: str
    file: str
    command: tuple[str, ...]  # as the README gives it; the port is added
    port_option: tuple[str, ...]
    ready: str
    traffic: tuple[str, ...]


QUICK_STARTS = [
    QuickStart("fastapi", "fastapi_main.py", ("uvicorn", "main:app"), ("--port",),
               "Uvicorn running on", tuple(f"/items/{n}" for n in range(12))),
    QuickStart("starlette", "starlette_main.py", ("uvicorn", "main:app"), ("--port",),
               "Uvicorn running on", tuple(f"/users/{n}" for n in range(12))),
    QuickStart("flask", "flask_main.py", ("flask", "--app", "main", "run"), ("--port",),
               "Running on http://127.0.0.1", tuple(f"/items/{n}" for n in range(12))),
]  # fmt: skip


def _clean_environment() -> dict[str, str]:
    """The machine's environment without this checkout, its venv or what the
    test run set (the Django tests' settings module) in it: a new user's shell."""
    dropped = ("PYTHONPATH", "VIRTUAL_ENV", "DJANGO_SETTINGS_MODULE")
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("AEGIS_") and name not in dropped
    }
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    into = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(into), str(ROOT)],
        check=True,
        timeout=INSTALL_TIMEOUT,
        env=_clean_environment(),
    )
    (built,) = into.glob("aegis_mw-*.whl")
    return built


@pytest.fixture(scope="module")
def venvs(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A fresh virtual environment per extra, made on first use."""
    made: dict[str, Path] = {}

    def venv(extra: str) -> Path:
        if extra not in made:
            where = tmp_path_factory.mktemp(f"venv-{extra}")
            base = getattr(sys, "_base_executable", sys.executable)
            subprocess.run([base, "-m", "venv", str(where)], check=True, timeout=120)
            subprocess.run(
                [str(where / "bin" / "python"), "-m", "pip", "install", "--quiet",
                 f"{wheel}[{extra}]"],
                check=True, timeout=INSTALL_TIMEOUT, env=_clean_environment(),
            )  # fmt: skip
            made[extra] = where
        return made[extra]

    return venv


@contextmanager
def running(
    command: list[str], cwd: Path, ready: str, unset: tuple[str, ...] = (), **env: str
) -> Iterator[ChildOutput]:
    """The command in a session of its own: a server that forks (Django's
    reloader) is stopped whole. ``unset``: variables of the machine's it does not get."""
    environment = {k: v for k, v in _clean_environment().items() if k not in unset}
    process = subprocess.Popen(
        command, cwd=cwd, env={**environment, **env}, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    assert process.stdout is not None
    output = ChildOutput(process.stdout)
    try:
        if output.wait_for(ready, STARTUP_TIMEOUT) is None:
            pytest.fail(f"{command} did not start:\n{output.text}")
        yield output
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        output.join(30)


def _see_it_live(browser: Any, base: str, link: str, requests: int) -> None:
    """The page from the printed link: its WebSocket connected, the charts drawn."""
    browser.get(f"{base}{link}")
    wait_until(browser, lambda d: text_of(d, "status") == "live", "the stream connected")
    wait_until(browser, lambda d: all(chart_scales(d).values()), "three charts drawn")
    wait_until(
        browser, lambda d: text_of(d, "tile-total").replace(",", "").isdigit()
        and int(text_of(d, "tile-total").replace(",", "")) >= requests, "the traffic counted",
    )  # fmt: skip
    failed = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert failed == [], failed


@pytest.mark.parametrize("quick", QUICK_STARTS, ids=[q.extra for q in QUICK_STARTS])
def test_a_quick_start_as_written(
    quick: QuickStart, venvs: Any, browser: Any, tmp_path: Path
) -> None:
    venv = venvs(quick.extra)
    shutil.copy(ROOT / "examples" / "quickstart" / quick.file, tmp_path / "main.py")
    port = free_port()
    command = [str(venv / "bin" / quick.command[0]), *quick.command[1:], *quick.port_option,
               str(port)]  # fmt: skip
    with running(command, tmp_path, quick.ready) as output:
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=10.0) as client:
            for path in quick.traffic:
                assert client.get(path).status_code == 200
            assert client.get("/dashboard").status_code == 401  # private by default
        match = output.wait_for(PRINTED_LINK, STARTUP_TIMEOUT)
        assert match is not None, output.text
        _see_it_live(browser, base, match.group(1), len(quick.traffic))


def test_the_django_example_as_written(venvs: Any, browser: Any, tmp_path: Path) -> None:
    """The README's Django project, from a checkout, with only the ``django``
    extra: Django's own server, the stream on ``ws_port`` (a free one here)."""
    venv = venvs("django")
    shutil.copytree(ROOT / "examples", tmp_path / "examples",
                    ignore=shutil.ignore_patterns("__pycache__", "*.db*"))  # fmt: skip
    port, stream = free_port(), free_port()
    command = [str(venv / "bin" / "python"), "examples/django_project/manage.py", "runserver",
               f"127.0.0.1:{port}"]  # fmt: skip
    with running(command, tmp_path, "Starting development server", AEGIS_WS_PORT=str(stream)) as (
        output
    ):
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=10.0) as client:
            for number in range(12):
                assert client.get(f"/api/items/{number}").status_code == 200
        match = output.wait_for(PRINTED_LINK, STARTUP_TIMEOUT)
        assert match is not None, output.text
        _see_it_live(browser, base, match.group(1), 12)


def test_the_demo_as_written(venvs: Any, browser: Any, tmp_path: Path) -> None:
    """``./run-demo`` installs the ``fastapi`` extra and runs ``aegis-mw demo``."""
    venv = venvs("fastapi")
    command = [str(venv / "bin" / "aegis-mw"), "demo", "--port", "0", "--duration", "120"]
    with running(command, tmp_path, "  dashboard  ") as output:
        printed = output.wait_for(re.compile(r"^  dashboard  (http://[^/]+)(/dashboard\S*)"), 5)
        assert printed is not None, output.text
        base, link = printed.group(1), printed.group(2)
        assert "?token=" in link
        _see_it_live(browser, base, link, 20)


def test_the_fastapi_quick_start_traced_with_only_the_tracing_extra(
    venvs: Any, tmp_path: Path
) -> None:
    """ "With OpenTelemetry": ``pip install 'aegis_mw[fastapi,tracing]'``, the
    quick start run with ``AEGIS_TRACING=true`` and the OTLP endpoint in the
    standard variable; a real receiver gets the request's span."""
    from tests.sinks.otlp_receiver import Receiver
    from tests.tracing import OTEL_VARIABLES, exported_spans

    venv = venvs("fastapi,tracing")
    shutil.copy(ROOT / "examples" / "quickstart" / "fastapi_main.py", tmp_path / "main.py")
    port = free_port()
    receiver = Receiver().start()
    try:
        command = [str(venv / "bin" / "uvicorn"), "main:app", "--port", str(port)]
        endpoint = f"http://127.0.0.1:{receiver.port}"
        server = running(
            command, tmp_path, "Uvicorn running on", OTEL_VARIABLES, AEGIS_TRACING="true",
            OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
        )  # fmt: skip
        with server, httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10.0) as client:
            assert client.get("/items/5").status_code == 200
            assert client.get("/metrics").status_code == 200
        # Stopped by SIGTERM: the lifespan shutdown exported the span.
        names = [span.name for _, span in exported_spans(receiver)]
    finally:
        receiver.stop()
    assert names == ["GET /items/{item_id}"]


def test_the_flask_quick_start_traced_with_only_the_tracing_extra(
    venvs: Any, tmp_path: Path
) -> None:
    """``pip install 'aegis_mw[flask,tracing]'``: the Flask quick start under
    ``flask run`` with ``AEGIS_TRACING=true``; the SDK's batch processor
    exports the request's span while the app runs (asked to every 0.2 s)."""
    from tests.sinks.otlp_receiver import Receiver
    from tests.tracing import OTEL_VARIABLES, exported_spans

    venv = venvs("flask,tracing")
    shutil.copy(ROOT / "examples" / "quickstart" / "flask_main.py", tmp_path / "main.py")
    port = free_port()
    receiver = Receiver().start()
    try:
        command = [str(venv / "bin" / "flask"), "--app", "main", "run", "--port", str(port)]
        endpoint = f"http://127.0.0.1:{receiver.port}"
        server = running(
            command, tmp_path, "Running on http://127.0.0.1", (*OTEL_VARIABLES,
            "OTEL_BSP_SCHEDULE_DELAY"), AEGIS_TRACING="true", OTEL_BSP_SCHEDULE_DELAY="200",
            OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
        )  # fmt: skip
        with server as output:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10.0) as client:
                assert client.get("/items/5").status_code == 200
                assert client.get("/metrics").status_code == 200  # ours: no span
            assert receiver.wait_for("traces", 1, STARTUP_TIMEOUT), output.text
        names = [span.name for _, span in exported_spans(receiver)]
    finally:
        receiver.stop()
    assert names == ["GET /items/{item_id}"]
