"""``aegis-mw demo`` as a real process: it serves, records to SQLite and reports what it stored."""

from __future__ import annotations

import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from websockets.sync.client import connect

from tests.child_output import ChildOutput

ROOT = Path(__file__).resolve().parents[1]
STARTUP_TIMEOUT = 60.0
EXIT_TIMEOUT = 60.0
APP_LINE = re.compile(
    r"^  app +http://127\.0\.0\.1:(\d+)/ +\(try http://127\.0\.0\.1:(\d+)/api/items/1\)$"
)
SQLITE_LINE = re.compile(r'^ +sqlite3 (\S+) "(SELECT [^"]+)"$')
DASHBOARD_LINE = re.compile(r"^  dashboard  (http://\S+/dashboard\?token=\S+)   ")
ROUTE_LINE = re.compile(r"^ +(\d+) +([A-Z_]+) +(\S+)$")
# Requests this test sends itself, so the routes it checks do not depend on the
# demo's random traffic mix: (method, path, status, route).
OWN_REQUESTS = (
    ("GET", "/api/items/7", 200, "/api/items/{item_id}"),
    ("GET", "/no/such/page/sent-by-pytest", 404, "<unmatched>"),
    ("GET", "/", 200, "/"),
    ("GET", "/api/fail", 500, "/api/fail"),
)

pytestmark = pytest.mark.slow


def child_environment() -> dict[str, str]:
    """The test's environment without ``AEGIS_*`` variables, the repository on the path."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("AEGIS_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def console_script() -> Path:
    """The ``aegis-mw`` entry point installed next to this interpreter."""
    script = Path(sys.executable).with_name("aegis-mw")
    assert script.exists(), f"aegis-mw is not installed next to {sys.executable}"
    return script


def run_cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``aegis-mw`` with ``args`` to completion (killed on timeout)."""
    return subprocess.run(
        [str(console_script()), *args],
        cwd=cwd,
        env=child_environment(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=EXIT_TIMEOUT,
        check=False,
    )


@dataclass
class DemoRun:
    returncode: int
    stdout: list[str]
    stderr: str
    port: int
    own_statuses: list[int]
    metrics: str
    live_status: int
    dashboard: str
    frame: dict[str, Any]


def run_demo(cwd: Path, db: str, *args: str) -> DemoRun:
    """Run the demo, send OWN_REQUESTS to the URL it prints, wait for it to finish by itself."""
    command = [sys.executable, "-m", "aegis_mw.cli", "demo", "--port", "0", "--db", db]
    errors_path = cwd / "demo-stderr.log"
    with errors_path.open("w") as errors:
        process = subprocess.Popen(
            [*command, *args],
            cwd=cwd,
            env=child_environment(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
        )
    assert process.stdout is not None
    reader = ChildOutput(process.stdout)
    try:
        app = reader.wait_for(APP_LINE, STARTUP_TIMEOUT)
        assert app is not None, "\n".join(reader.lines) + errors_path.read_text()
        port = int(app.group(1))
        statuses = []
        # The link the demo prints, followed as a browser would: the token is
        # traded for a cookie, which the page's stream then carries.
        (link,) = [m.group(1) for line in reader.lines if (m := DASHBOARD_LINE.match(line))]
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10.0) as client:
            for method, path, _, _ in OWN_REQUESTS:
                statuses.append(client.request(method, path).status_code)
            metrics = client.get("/metrics").text
            live_status = client.get("/health/live").status_code
            assert client.get("/dashboard").status_code == 401  # private without the link
            dashboard = client.get(link, follow_redirects=True).text
            # One cookie per path the page uses (page, API, stream), all the same token.
            (token,) = {cookie.value for cookie in client.cookies.jar}
            cookie = f"aegis_token={token}"
        # The page's stream, while the demo's traffic flows: a frame with a live rate.
        url = f"ws://127.0.0.1:{port}/ws/metrics"
        with connect(url, additional_headers={"Cookie": cookie}) as stream:
            frame: dict[str, Any] = {}
            for _ in range(10):
                frame = json.loads(stream.recv(timeout=10.0))
                if (
                    frame["type"] == "metrics"
                    and frame["data"]["overview"]["requests_per_second_10s"]
                ):
                    break
        returncode = process.wait(timeout=EXIT_TIMEOUT)
        reader.join(EXIT_TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=EXIT_TIMEOUT)
        reader.join(EXIT_TIMEOUT)
    return DemoRun(
        returncode, reader.lines, errors_path.read_text(), port, statuses, metrics, live_status,
        dashboard, frame,
    )  # fmt: skip


def query(db: Path, sql: str, parameters: Sequence[object] = ()) -> list[tuple[Any, ...]]:
    connection = sqlite3.connect(db)
    try:
        return connection.execute(sql, parameters).fetchall()
    finally:
        connection.close()


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[DemoRun, Path]:
    """One eight-second demo run at 40 requests/s, shared by the tests below; the
    file given as a ``sqlite:///`` URL (four slashes: an absolute path). Eight
    seconds leave this test's own requests room on a loaded machine: with
    three, the demo sometimes ended (resetting the connection) before they
    were done."""
    workdir = tmp_path_factory.mktemp("demo")
    db = workdir / "demo.db"
    return run_demo(workdir, f"sqlite:///{db}", "--duration", "8", "--rate", "40"), db


def test_demo_exits_cleanly_and_prints_where_to_look(demo: tuple[DemoRun, Path]) -> None:
    """Exit 0; the printout names the real port (it answered), the file and a sqlite3 command."""
    run, db = demo
    assert run.returncode == 0, "\n".join(run.stdout) + run.stderr
    assert run.stdout[0] == "aegis_mw demo"
    (app,) = [m for line in run.stdout if (m := APP_LINE.match(line))]
    assert int(app.group(1)) == int(app.group(2)) == run.port > 0
    assert run.own_statuses == [status for _, _, status, _ in OWN_REQUESTS]
    assert f"  records    {db}  (table aegis_requests)" in run.stdout
    port = run.port
    assert f"  metrics    http://127.0.0.1:{port}/metrics   (Prometheus text format)" in run.stdout
    alerts = f"  alerts     http://127.0.0.1:{port}/api/metrics/alerts   (fail_route_errors fires"
    assert any(line.startswith(alerts) for line in run.stdout), run.stdout
    token = Path(f"{db}.token").read_text().strip()  # kept beside the database
    dashboard = (
        f"  dashboard  http://127.0.0.1:{port}/dashboard?token={token}   "
        "(live; open it in a browser)"
    )
    assert run.stdout[1] == dashboard
    # The stream is a WebSocket: a ws:// URL, which the test connected to.
    stream = (
        f"  stream     ws://127.0.0.1:{port}/ws/metrics   (live JSON frames, as the dashboard gets)"
    )
    assert stream in run.stdout
    assert not [line for line in run.stdout if "http://127.0.0.1" in line and "/ws/" in line]
    assert "<title>aegis_mw dashboard</title>" in run.dashboard
    # What the page shows is alive: the stream reports the synthetic traffic.
    overview = run.frame["data"]["overview"]
    assert run.frame["type"] == "metrics" and overview["requests_per_second_10s"] > 0
    assert 'aegis_http_requests_total{method="GET",route="/api/items/{item_id}"' in run.metrics
    assert run.live_status == 200
    (command,) = [m for line in run.stdout if (m := SQLITE_LINE.match(line))]
    assert command.group(1) == str(db)
    # The query the printout suggests runs as printed against the file.
    suggested = {(route, status): count for route, status, count in query(db, command.group(2))}
    ((total,),) = query(db, "SELECT COUNT(*) FROM aegis_requests")
    assert sum(suggested.values()) == total
    assert suggested.keys() >= {("<unmatched>", 404), ("/api/items/{item_id}", 200)}


def test_demo_database_holds_the_traffic(demo: tuple[DemoRun, Path]) -> None:
    """Many requests over several routes, including this test's own, each stored once."""
    _, db = demo
    ((total,),) = query(db, "SELECT COUNT(*) FROM aegis_requests")
    assert isinstance(total, int)
    assert total > len(OWN_REQUESTS)
    routes = {route for (route,) in query(db, "SELECT DISTINCT route FROM aegis_requests")}
    assert {"/api/items/{item_id}", "<unmatched>", "/", "/api/fail"} <= routes
    assert len(routes) >= 5  # the synthetic traffic adds at least /api/items
    own = query(
        db,
        "SELECT method, status, route, client_ip FROM aegis_requests WHERE path = ?",
        ("/no/such/page/sent-by-pytest",),
    )
    assert own == [("GET", 404, "<unmatched>", "127.0.0.1")]
    failures = query(
        db, "SELECT DISTINCT status, error FROM aegis_requests WHERE route = ?", ("/api/fail",)
    )
    assert failures == [(500, "RuntimeError: a deliberate failure for the demo")]
    ((ids,),) = query(db, "SELECT COUNT(DISTINCT request_id) FROM aegis_requests")
    assert ids == total


def test_demo_summary_matches_the_database(demo: tuple[DemoRun, Path]) -> None:
    """The final 'stored N', per-route counts and 'dropped 0' lines agree with the file."""
    run, db = demo
    ((total,),) = query(db, "SELECT COUNT(*) FROM aegis_requests")
    stored_at = run.stdout.index(f"stored {total} requests in {db}")
    dropped_at = run.stdout.index("dropped 0; sink errors 0")
    printed = [ROUTE_LINE.match(line) for line in run.stdout[stored_at + 1 : dropped_at]]
    groups = {
        (str(method), str(route)): count
        for method, route, count in query(
            db, "SELECT method, route, COUNT(*) FROM aegis_requests GROUP BY method, route"
        )
    }
    assert all(match is not None for match in printed), run.stdout
    assert len(printed) == min(8, len(groups))
    for match in printed:
        assert match is not None
        assert groups[(match.group(2), match.group(3))] == int(match.group(1)), match.group(0)
    assert dropped_at == len(run.stdout) - 1


def test_db_is_a_path_or_a_sqlite_url(tmp_path: Path) -> None:
    """Both name the same file; the printout's sqlite3 command gets the path."""
    from aegis_mw.cli import build_parser

    for given in ("demo.db", "sqlite:///demo.db"):
        assert build_parser().parse_args(["demo", "--db", given]).db == "demo.db"
    absolute = str(tmp_path / "d b%.db")
    for given in (absolute, f"sqlite:///{quote(absolute)}"):
        assert build_parser().parse_args(["demo", "--db", given]).db == absolute


def test_a_port_in_use_is_one_clear_line(tmp_path: Path) -> None:
    """Exit 1 with a line that names the address and suggests --port 0; nothing
    printed before, no traceback, no database created."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(tmp_path, "demo", "--port", str(port), "--db", "demo.db")
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    assert result.stderr == (
        f"aegis-mw: error: cannot listen on 127.0.0.1:{port}: the address is already in use "
        "(another server?); try --port 0 to pick a free port\n"
    )
    assert list(tmp_path.iterdir()) == []


def test_cli_help(tmp_path: Path) -> None:
    """`aegis-mw --help` lists the demo command; `aegis-mw demo --help` its options."""
    top = run_cli(tmp_path, "--help")
    assert top.returncode == 0, top.stderr
    assert top.stdout.startswith("usage: aegis-mw")
    assert "demo" in top.stdout
    demo = run_cli(tmp_path, "demo", "--help")
    assert demo.returncode == 0, demo.stderr
    assert demo.stdout.startswith("usage: aegis-mw demo")
    for option in ("--host", "--port", "--db", "--rate", "--duration"):
        assert option in demo.stdout
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("demo", "--rate", "0"), "argument --rate: must be > 0, not 0"),
        (("demo", "--rate", "-5"), "argument --rate: must be > 0, not -5"),
        (("demo", "--duration", "0"), "argument --duration: must be > 0, not 0"),
        (("demo", "--rate", "fast"), "argument --rate: invalid"),
        (
            ("demo", "--db", "no/such/demo.db"),
            "argument --db: the directory {tmp}/no/such does not exist",
        ),
        (
            ("demo", "--db", "sqlite:///no/demo.db"),
            "argument --db: the directory {tmp}/no does not exist",
        ),
        (("demo", "--db", "."), "argument --db: {tmp} is a directory; give a file path"),
        (("demo", "--db", "postgresql://db/x"), "argument --db: the demo writes a SQLite file"),
        ((), "the following arguments are required: COMMAND"),
    ],
)
def test_cli_rejects_bad_arguments_with_a_usage_error(
    tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    """Bad values exit with status 2 and a usage message, before anything starts."""
    result = run_cli(tmp_path, *args)
    assert result.returncode == 2
    assert result.stderr.startswith("usage: aegis-mw")
    assert message.format(tmp=tmp_path) in result.stderr
    assert result.stdout == ""
    assert list(tmp_path.iterdir()) == []  # no database was created
