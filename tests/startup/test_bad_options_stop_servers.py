"""A bad option stops the server at start, with the option's message in its
output and a non-zero exit, whichever way the middleware was added and
whichever server runs the app: never a server that starts and answers 500."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest

from tests.servers import child_environment, gunicorn_command, uvicorn_server

pytestmark = pytest.mark.slow
#: A server that started anyway (the defect) would serve until this runs out.
EXIT_WITHIN = 60.0

FASTAPI_ADD_MIDDLEWARE = """
from fastapi import FastAPI
from aegis_mw import AegisMiddleware

app = FastAPI()
started = []

@app.on_event("startup")
async def remember():
    started.append(True)

@app.get("/")
async def root():
    return {"started": bool(started)}

app.add_middleware(AegisMiddleware, sink="memory://", sample_rate=2)
"""

STARLETTE_MIDDLEWARE_LIST = """
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from aegis_mw import AegisMiddleware

async def root(request):
    return PlainTextResponse("ok")

app = Starlette(
    routes=[Route("/", root)],
    middleware=[Middleware(AegisMiddleware, sink="memory://", samplerate=0.5)],
)
"""

WRAPPED = """
from starlette.applications import Starlette
from aegis_mw import AegisMiddleware

app = AegisMiddleware(Starlette(), sink="memory://")
"""

FLASK = """
from flask import Flask
from aegis_mw.contrib.flask import Aegis

app = Flask(__name__)
app.config["AEGIS_SINK"] = "bogus://nowhere"
Aegis(app)
"""


def _write(workdir: Path, source: str) -> None:
    (workdir / "badapp.py").write_text(textwrap.dedent(source))


def _run(command: list[str], workdir: Path, **env: str) -> tuple[int, str]:
    """Run a server to its exit; its output, both streams."""
    environment = child_environment(**env)
    environment["PYTHONPATH"] = f"{workdir}:{environment['PYTHONPATH']}"
    # A session of its own: a server that started anyway (with workers) is
    # stopped whole when the time runs out, not just its first process.
    process = subprocess.Popen(
        command, cwd=workdir, env=environment, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        output, _ = process.communicate(timeout=EXIT_WITHIN)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"{command} still ran after {EXIT_WITHIN} s:\n{output}")
    return process.returncode, output


def _uvicorn(*args: str) -> list[str]:
    return [sys.executable, "-m", "uvicorn", "badapp:app", "--host", "127.0.0.1", "--port", "0",
            *args]  # fmt: skip


@pytest.mark.parametrize(
    ("source", "env", "words"),
    [
        (FASTAPI_ADD_MIDDLEWARE, {}, "'sample_rate' (from keyword argument) = 2 is invalid"),
        (STARLETTE_MIDDLEWARE_LIST, {}, "did you mean 'sample_rate'?"),
        (WRAPPED, {"AEGIS_FLUSH_INTERVAL": "abc"}, "(from AEGIS_FLUSH_INTERVAL) = 'abc'"),
    ],
    ids=["add_middleware", "middleware-list", "wrapped-env"],
)
def test_uvicorn_refuses_to_start(
    tmp_path: Path, source: str, env: dict[str, str], words: str
) -> None:
    _write(tmp_path, source)
    code, output = _run(_uvicorn(), tmp_path, **env)
    assert code != 0, output
    assert words in output
    assert "Application startup complete" not in output
    assert output.count(words) == 1, output  # said once, not once per attempt


def test_gunicorn_with_uvicorn_workers_refuses_to_start(tmp_path: Path) -> None:
    _write(tmp_path, FASTAPI_ADD_MIDDLEWARE)
    code, output = _run(gunicorn_command(2, "badapp:app"), tmp_path)
    assert code != 0, output
    assert "'sample_rate' (from keyword argument) = 2 is invalid" in output


def test_gunicorn_refuses_a_flask_app_naming_its_config_key(tmp_path: Path) -> None:
    _write(tmp_path, FLASK)
    code, output = _run(gunicorn_command(2, "badapp:app", worker_class="sync"), tmp_path)
    assert code != 0, output
    assert """option 'sink' (from app.config["AEGIS_SINK"]) = 'bogus://nowhere'""" in output


def test_without_lifespan_each_request_hears_why_and_the_log_says_it_once(
    tmp_path: Path,
) -> None:
    _write(tmp_path, FASTAPI_ADD_MIDDLEWARE)
    env = child_environment()
    env["PYTHONPATH"] = f"{tmp_path}:{env['PYTHONPATH']}"
    with uvicorn_server("badapp:app", tmp_path, "--lifespan", "off", env=env) as server:
        answers = [httpx.get(f"{server.url}/", timeout=10) for _ in range(3)]
        server.terminate()
        log = server.log.text
    for answer in answers:
        assert answer.status_code == 500
        error = answer.json()["error"]
        assert error["code"] == "misconfigured"
        assert "'sample_rate' (from keyword argument) = 2 is invalid" in error["message"]
    assert log.count("'sample_rate' (from keyword argument) = 2 is invalid") == 1, log


DJANGO_SETTINGS = """
SECRET_KEY = "not-secret-for-tests"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "badurls"
INSTALLED_APPS = ["aegis_mw.contrib.django"]
MIDDLEWARE = ["aegis_mw.contrib.django.AegisMiddleware"]
AEGIS = {"sink": "memory://", "sample_rate": 2}
"""


def _django_project(workdir: Path) -> None:
    (workdir / "badsettings.py").write_text(DJANGO_SETTINGS)
    (workdir / "badurls.py").write_text("urlpatterns = []\n")
    (workdir / "badwsgi.py").write_text(
        "from django.core.wsgi import get_wsgi_application\napplication = get_wsgi_application()\n"
    )
    (workdir / "badasgi.py").write_text(
        "from django.core.asgi import get_asgi_application\napplication = get_asgi_application()\n"
    )
    (workdir / "manage.py").write_text(
        "import sys\nfrom django.core.management import execute_from_command_line\n"
        "execute_from_command_line(sys.argv)\n"
    )


@pytest.mark.parametrize(
    "command",
    [
        [*gunicorn_command(2, "badwsgi:application", worker_class="sync")],
        [sys.executable, "-m", "uvicorn", "badasgi:app", "--port", "0"],
        [sys.executable, "manage.py", "runserver", "--noreload", "127.0.0.1:0"],
    ],
    ids=["gunicorn", "uvicorn", "runserver"],
)
def test_django_refuses_to_start(tmp_path: Path, command: list[str]) -> None:
    _django_project(tmp_path)
    command = [part.replace("badasgi:app", "badasgi:application") for part in command]
    code, output = _run(command, tmp_path, DJANGO_SETTINGS_MODULE="badsettings")
    assert code != 0, output
    assert "'sample_rate'" in output and "= 2 is invalid" in output, output
