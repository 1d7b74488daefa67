"""Client addresses behind a real reverse proxy: nginx on 127.0.0.1 in front of the
examples, and the ``client_ip``, ``route`` and ``status`` the app stored in SQLite.

nginx appends the address of whoever connected to it to the client's
``X-Forwarded-For`` (``$proxy_add_x_forwarded_for``) and, the same way, a
``for=`` element to its RFC 7239 ``Forwarded``. aegis_mw reads the header only
when the connection's peer is in ``trusted_proxies``, and walks its entries from
the right past the trusted ones to the first untrusted one, the rightmost
untrusted (``aegis_mw/core/client_address.py``); when every entry is trusted,
the leftmost.

On loopback nginx, and so the app's peer, is 127.0.0.1, and two source
addresses stand for two kinds of client of nginx (Linux routes all of
127.0.0.0/8 to the loopback device, so a client can bind 127.0.0.2):

- 127.0.0.1, inside ``trusted_proxies=127.0.0.1/32``: a trusted hop in front of
  nginx (a load balancer) whose header names the real client;
- 127.0.0.2, outside it: an end user, whose own header must not be believed.

The Flask example runs under gunicorn (sync workers); the FastAPI example under
uvicorn with ``--no-proxy-headers``, so that its peer is nginx and aegis_mw alone
decides, on the compiled request path and on the pure-Python one (what uvicorn's
default proxy handling does first is the last test). Options come as ``AEGIS_*``
variables. Each deployment is started once per module, sent its plan, stopped
with SIGTERM (which writes the records) and its SQLite file then read.
"""

from __future__ import annotations

import functools
import json
import os
import queue
import shutil
import signal
import socket
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack, closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import httpx
import pytest

from aegis_mw.sinks.sqlite_schema import REQUEST_COLUMNS
from tests.conftest import REQUIRE_SERVICES
from tests.servers import (
    EXIT_TIMEOUT,
    STARTUP_TIMEOUT,
    child_environment,
    free_port,
    gunicorn_command,
    gunicorn_process,
    uvicorn_server,
    wait_for,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not hasattr(os, "fork"), reason="gunicorn needs os.fork (POSIX)"),
]

TRUSTED_HOP = "127.0.0.1"  # nginx, and a load balancer in front of it
END_USER = "127.0.0.2"  # a client of nginx outside trusted_proxies
CLIENT = "203.0.113.7"  # whom the trusted hop forwards for
OTHER = "198.51.100.1"  # an address a client wrote in front of it
XFF = "X-Forwarded-For"
FORWARDED = "Forwarded"
TRUST_NGINX = {"AEGIS_TRUSTED_PROXIES": "127.0.0.1/32"}
#: /metrics answers only clients in 203.0.113.0/24 (after trusted proxies).
SCRAPES_FROM_CLIENT_NETWORK = {
    "AEGIS_ACCESS": json.dumps({"metrics": {"allow_ips": ["203.0.113.0/24"]}})
}
CLIENT_TIMEOUT = 10.0
POLL_INTERVAL = 0.05
NGINX_ATTEMPTS = 3  # a free port can be taken before nginx binds it: try another
READY_PATH = "/nginx-ready"  # answered by nginx itself, never proxied
READY_HEADER = "x-test-proxy"
STORED = ("path", "route", "status", "client_ip")
LISTENING = r"Listening at: http://127\.0\.0\.1:(\d+)"


# --------------------------------------------------------------------------- nginx


def nginx_config(prefix: Path, port: int, upstream: str) -> str:
    """One foreground process (no master, no user switch), every file under ``prefix``."""
    return f"""\
daemon off;
master_process off;
worker_processes 1;
pid "{prefix}/nginx.pid";
lock_file "{prefix}/nginx.lock";
error_log "{prefix}/error.log" info;
events {{ worker_connections 64; }}
http {{
    # What the client sent, and what this hop passed on.
    log_format chain '$remote_addr "$request" $status xff="$http_x_forwarded_for" '
                     'forwarded="$http_forwarded" sent_xff="$proxy_add_x_forwarded_for" '
                     'sent_forwarded="$proxy_add_forwarded"';
    access_log "{prefix}/access.log" chain;
    client_body_temp_path "{prefix}/client_body";
    proxy_temp_path "{prefix}/proxy";
    fastcgi_temp_path "{prefix}/fastcgi";
    uwsgi_temp_path "{prefix}/uwsgi";
    scgi_temp_path "{prefix}/scgi";
    # RFC 7239: this hop's element appended to the client's, as
    # $proxy_add_x_forwarded_for does (an IPv6 peer would need for="[...]";
    # this server listens on 127.0.0.1 only).
    map $http_forwarded $proxy_add_forwarded {{
        ""      "for=$remote_addr";
        default "$http_forwarded, for=$remote_addr";
    }}
    server {{
        listen 127.0.0.1:{port};
        location = {READY_PATH} {{
            add_header {READY_HEADER} ready always;
            return 204;
        }}
        location / {{
            proxy_pass {upstream};
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header Forwarded $proxy_add_forwarded;
        }}
    }}
}}
"""


def can_bind(address: str) -> bool:
    try:
        with socket.socket() as probe:
            probe.bind((address, 0))
    except OSError:
        return False
    return True


@dataclass
class Proxy:
    url: str
    prefix: Path

    def log(self) -> str:
        """nginx's own output, error log and access log (with the headers it got)."""
        parts = []
        for name in ("nginx.out", "error.log", "access.log"):
            file = self.prefix / name
            text = file.read_text(errors="replace").rstrip() if file.exists() else "(none)"
            parts.append(f"--- nginx {name} ---\n{text}")
        return "\n".join(parts)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=EXIT_TIMEOUT)


def serving(process: subprocess.Popen[bytes], proxy: Proxy) -> bool:
    """Ask nginx's own location until it answers (True) or nginx exits (False)."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    for _ in range(int(STARTUP_TIMEOUT / POLL_INTERVAL)):
        if process.poll() is not None:
            return False
        try:
            response = httpx.get(proxy.url + READY_PATH, timeout=1.0, trust_env=False)
            # The header tells our nginx from whatever else might hold the port.
            if response.headers.get(READY_HEADER) == "ready":
                return True
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            break
        try:
            process.wait(timeout=POLL_INTERVAL)  # the pause between tries ends if nginx exits
        except subprocess.TimeoutExpired:
            pass
    pytest.fail(f"nginx did not answer on {proxy.url} in {STARTUP_TIMEOUT} s\n{proxy.log()}")


@contextmanager
def nginx_in_front_of(binary: str, upstream: str, workdir: Path) -> Iterator[Proxy]:
    """nginx on a free 127.0.0.1 port proxying to the app at ``upstream``
    (``http://127.0.0.1:PORT`` or ``http://unix:PATH``); terminated on the way out."""
    for attempt in range(1, NGINX_ATTEMPTS + 1):
        prefix = workdir / f"nginx-{attempt}"
        prefix.mkdir()
        port = free_port()
        config = prefix / "nginx.conf"
        config.write_text(nginx_config(prefix, port, upstream))
        # -e: the error log from the start (a build's default may be a path we cannot write).
        command = [binary, "-p", f"{prefix}/", "-e", str(prefix / "error.log"), "-c", str(config)]
        with (prefix / "nginx.out").open("wb") as output:
            process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT
            )
        proxy = Proxy(f"http://127.0.0.1:{port}", prefix)
        try:
            if serving(process, proxy):
                yield proxy
                return
        finally:
            stop(process)
        if "Address already in use" not in proxy.log():
            break
    pytest.fail(f"nginx did not start\n{proxy.log()}")


@pytest.fixture(scope="module")
def nginx() -> str:
    """Debian's nginx binary (in /usr/sbin, often not on a user's PATH)."""
    binary = "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else shutil.which("nginx")
    if binary is None:
        message = "nginx is not installed (Debian package 'nginx-light')"
        if REQUIRE_SERVICES:
            pytest.fail(message)
        pytest.skip(message)
    if not can_bind(END_USER):
        pytest.skip(f"{END_USER} is not a loopback address here (a client needs to bind it)")
    return binary


# --------------------------------------------------------------------------- the apps


@dataclass
class App:
    port: int
    output: Callable[[], str]


Serve = Callable[[Path, Mapping[str, str]], AbstractContextManager[App]]


def output_so_far(lines: queue.Queue[str | None], seen: list[str]) -> str:
    """gunicorn's output: what a wait looked at and what has come since."""
    for _ in range(lines.qsize()):
        line = lines.get_nowait()
        if line is not None:
            seen.append(line)
    return "\n".join(seen)


def flask_under_gunicorn(*gunicorn_args: str, **fixed_env: str) -> Serve:
    """The Flask example under gunicorn, two sync workers."""

    @contextmanager
    def serve(workdir: Path, env: Mapping[str, str]) -> Iterator[App]:
        # AEGIS_WS_PORT=0: no realtime server thread (the example's default port is fixed).
        environment = child_environment(
            **{"PYTHONUNBUFFERED": "1", "AEGIS_WS_PORT": "0", **fixed_env, **env}
        )
        command = gunicorn_command(2, "examples.flask_app:app", *gunicorn_args, worker_class="sync")
        with gunicorn_process(command, workdir, environment) as (process, lines, seen):
            deadline = time.monotonic() + STARTUP_TIMEOUT
            [listening] = wait_for(lines, seen, LISTENING, 1, deadline)
            wait_for(lines, seen, r"Booting worker with pid: (\d+)", 2, deadline)
            yield App(int(listening.group(1)), functools.partial(output_so_far, lines, seen))
            process.send_signal(signal.SIGTERM)  # the workers write their records as they exit
            code = process.wait(timeout=EXIT_TIMEOUT)
        assert code == 0, "\n".join(seen)

    return serve


def fastapi_under_uvicorn(*uvicorn_args: str, **fixed_env: str) -> Serve:
    """The FastAPI example under uvicorn."""

    @contextmanager
    def serve(workdir: Path, env: Mapping[str, str]) -> Iterator[App]:
        environment = child_environment(**{**fixed_env, **env})
        app = "examples.fastapi_app:app"
        with uvicorn_server(app, workdir, *uvicorn_args, env=environment) as server:
            yield App(server.port, lambda: server.log.text)
            code = server.terminate()  # lifespan shutdown writes the records
        # uvicorn re-raises the signal it handled after a graceful shutdown (older ones exit 0).
        assert code in (0, -signal.SIGTERM), server.log.text

    return serve


@dataclass(frozen=True)
class Side:
    name: str
    items: str  # where the example's item route is
    route: str  # its template, as recorded
    serve: Serve


FLASK = ("/api/items", "/api/items/{item_id}")
FASTAPI = ("/items", "/items/{item_id}")
PYTHON_PATH = {"AEGIS_SPEEDUPS": "0"}  # the pure-Python request path, not the compiled one
SIDES = (
    Side("flask-gunicorn", *FLASK, flask_under_gunicorn()),
    Side("flask-gunicorn-python-path", *FLASK, flask_under_gunicorn(**PYTHON_PATH)),
    Side("fastapi-uvicorn", *FASTAPI, fastapi_under_uvicorn("--no-proxy-headers")),
    Side(
        "fastapi-uvicorn-python-path",
        *FASTAPI,
        fastapi_under_uvicorn("--no-proxy-headers", **PYTHON_PATH),
    ),
)


@pytest.fixture(scope="module", params=SIDES, ids=[side.name for side in SIDES])
def side(request: pytest.FixtureRequest) -> Side:
    chosen: Side = request.param
    return chosen


# --------------------------------------------------------------------------- a deployment


class Sent(NamedTuple):
    """One request of a plan: to an item (recorded) or to /metrics (answered by
    aegis_mw, never recorded), through nginx or straight to the app, from a
    source address, with the forwarding headers the client wrote itself."""

    name: str
    through_nginx: bool
    source: str
    headers: tuple[tuple[str, str], ...] = ()
    metrics: bool = False


def via_nginx(name: str, source: str, *headers: tuple[str, str], metrics: bool = False) -> Sent:
    return Sent(name, True, source, headers, metrics)


def direct(name: str, source: str, *headers: tuple[str, str], metrics: bool = False) -> Sent:
    return Sent(name, False, source, headers, metrics)


class Stored(NamedTuple):
    path: str
    route: str
    status: int
    client_ip: str | None


@dataclass
class Outcome:
    """What one deployment answered and stored, and every log, for messages."""

    side: Side
    plan: Sequence[Sent]
    statuses: dict[str, int]
    stored: dict[str, list[Stored]]  # by the name of the request that made them
    strays: list[Stored]  # stored rows no planned request explains
    logs: str

    def record(self, name: str) -> tuple[str | None, str, int]:
        """(client_ip, route, status) of the one record stored for request ``name``."""
        rows = self.stored.get(name, [])
        assert len(rows) == 1, f"{len(rows)} stored records for {name!r}: {rows}\n{self.logs}"
        return rows[0].client_ip, rows[0].route, rows[0].status


def stored_requests(db: Path) -> list[Stored]:
    assert set(STORED) <= set(REQUEST_COLUMNS)
    if not db.exists():
        return []
    with closing(sqlite3.connect(db)) as connection:
        rows = connection.execute(f"SELECT {', '.join(STORED)} FROM aegis_requests").fetchall()
    return [Stored(*row) for row in rows]


def send(
    plan: Sequence[Sent], paths: Mapping[str, str], proxy: str, app: str, logs: Callable[[], str]
) -> dict[str, int]:
    """Each request once, in order, on a new connection from its source address."""
    statuses: dict[str, int] = {}
    with ExitStack() as stack:
        clients: dict[str, httpx.Client] = {}
        for sent in plan:
            if sent.source not in clients:
                clients[sent.source] = stack.enter_context(
                    httpx.Client(
                        transport=httpx.HTTPTransport(local_address=sent.source),
                        timeout=CLIENT_TIMEOUT,
                        headers={"connection": "close"},
                        trust_env=False,  # straight to 127.0.0.1, whatever HTTP_PROXY says
                    )
                )
            url = (proxy if sent.through_nginx else app) + paths[sent.name]
            try:
                response = clients[sent.source].get(url, headers=list(sent.headers))
            except httpx.HTTPError as exc:
                pytest.fail(f"{sent.name}: GET {url} failed: {exc!r}\n{logs()}")
            statuses[sent.name] = response.status_code
    return statuses


def deploy(
    side: Side, nginx: str, workdir: Path, plan: Sequence[Sent], env: Mapping[str, str]
) -> Outcome:
    """The side's example behind nginx with ``env``: the plan sent, the app stopped, its
    records read. Item requests get a path each, so records are matched by path."""
    assert len({sent.name for sent in plan}) == len(plan)
    paths = {
        sent.name: "/metrics" if sent.metrics else f"{side.items}/{number}"
        for number, sent in enumerate(plan, 1)
    }
    started: dict[str, Callable[[], str]] = {}

    def logs() -> str:
        return "\n".join(started[name]() for name in ("nginx", "app") if name in started)

    with side.serve(workdir, env) as app:
        started["app"] = lambda: f"--- {side.name} output ---\n{app.output()}"
        with nginx_in_front_of(nginx, f"http://127.0.0.1:{app.port}", workdir) as proxy:
            started["nginx"] = proxy.log
            statuses = send(plan, paths, proxy.url, f"http://127.0.0.1:{app.port}", logs)
    names = {path: name for name, path in paths.items() if path != "/metrics"}
    stored: dict[str, list[Stored]] = {}
    strays = []
    for row in stored_requests(workdir / "aegis.db"):
        if row.path in names:
            stored.setdefault(names[row.path], []).append(row)
        else:
            strays.append(row)
    return Outcome(side, plan, statuses, stored, strays, logs())


# --------------------------------------------------------------------------- behind nginx, trusted

TRUSTED_PLAN = (
    via_nginx("forwarded by a trusted hop", TRUSTED_HOP, (XFF, CLIENT)),
    via_nginx("chain via a trusted hop", TRUSTED_HOP, (XFF, f"{OTHER}, {CLIENT}")),
    via_nginx("trusted hop, no header", TRUSTED_HOP),
    via_nginx("end user, forged header", END_USER, (XFF, CLIENT)),
    via_nginx("end user, forged trusted hop", END_USER, (XFF, f"{CLIENT}, {TRUSTED_HOP}")),
    via_nginx("end user, no header", END_USER),
    direct("end user around nginx, forged header", END_USER, (XFF, CLIENT)),
    via_nginx("scrape for the client", TRUSTED_HOP, (XFF, CLIENT), metrics=True),
    via_nginx("scrape for another network", TRUSTED_HOP, (XFF, OTHER), metrics=True),
    via_nginx("scrape, no header", TRUSTED_HOP, metrics=True),
    via_nginx("scrape by an end user, forged", END_USER, (XFF, CLIENT), metrics=True),
    direct("scrape around nginx, forged", END_USER, (XFF, CLIENT), metrics=True),
)


@pytest.fixture(scope="module")
def trusted(side: Side, nginx: str, tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    """trusted_proxies=127.0.0.1/32: nginx and the hop in front of it are trusted."""
    workdir = tmp_path_factory.mktemp(f"trusted-{side.name}")
    env = {**TRUST_NGINX, **SCRAPES_FROM_CLIENT_NETWORK}
    return deploy(side, nginx, workdir, TRUSTED_PLAN, env)


def test_behind_a_trusted_proxy_the_forwarded_client_is_recorded(trusted: Outcome) -> None:
    """The app gets 'X-Forwarded-For: 203.0.113.7, 127.0.0.1' from nginx (127.0.0.1):
    the entry nginx appended (the hop that connected to it) is trusted, so the
    record names the client that hop forwarded for."""
    route = trusted.side.route
    assert trusted.statuses["forwarded by a trusted hop"] == 200, trusted.logs
    assert trusted.record("forwarded by a trusted hop") == (CLIENT, route, 200), trusted.logs
    # Every entry trusted ('127.0.0.1' only): the leftmost, the hop itself.
    assert trusted.record("trusted hop, no header") == (TRUSTED_HOP, route, 200), trusted.logs


def test_a_spoofed_chain_gives_the_rightmost_untrusted_entry(trusted: Outcome) -> None:
    """'198.51.100.1, 203.0.113.7, 127.0.0.1': 203.0.113.7 is the first untrusted entry
    from the right; what was written to its left is never taken."""
    route = trusted.side.route
    assert trusted.record("chain via a trusted hop") == (CLIENT, route, 200), trusted.logs


def test_an_end_user_is_recorded_as_itself_whatever_it_forwards(trusted: Outcome) -> None:
    """nginx appends the end user's own address (127.0.0.2, untrusted) last, so the walk
    stops there: a forged header, even one naming a trusted hop, changes nothing; nor
    does one sent straight to the app, whose peer is then the end user itself."""
    route = trusted.side.route
    for name in (
        "end user, forged header",
        "end user, forged trusted hop",
        "end user, no header",
        "end user around nginx, forged header",
    ):
        assert trusted.statuses[name] == 200, trusted.logs
        assert trusted.record(name) == (END_USER, route, 200), f"{name}\n{trusted.logs}"


def test_allow_ips_sees_the_forwarded_client(trusted: Outcome) -> None:
    """/metrics open to 203.0.113.0/24 only: allowed for the client a trusted hop forwards
    for, refused (403) for anyone else, forged headers included; never recorded."""
    assert {sent.name: trusted.statuses[sent.name] for sent in trusted.plan if sent.metrics} == {
        "scrape for the client": 200,
        "scrape for another network": 403,
        "scrape, no header": 403,
        "scrape by an end user, forged": 403,
        "scrape around nginx, forged": 403,
    }, trusted.logs


# --------------------------------------------------------------------------- nobody trusted

UNTRUSTING_PLAN = (
    via_nginx("forwarded by a hop", TRUSTED_HOP, (XFF, CLIENT)),
    via_nginx("end user, forged header", END_USER, (XFF, CLIENT)),
    via_nginx("scrape for the client", TRUSTED_HOP, (XFF, CLIENT), metrics=True),
)


@pytest.fixture(scope="module")
def untrusting(side: Side, nginx: str, tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    """No trusted_proxies: the forwarding headers nginx sends are never read."""
    workdir = tmp_path_factory.mktemp(f"untrusting-{side.name}")
    return deploy(side, nginx, workdir, UNTRUSTING_PLAN, SCRAPES_FROM_CLIENT_NETWORK)


def test_without_trusted_proxies_the_header_is_ignored(untrusting: Outcome) -> None:
    """Every request is recorded as the peer, nginx at 127.0.0.1, and /metrics refuses it."""
    route = untrusting.side.route
    for name in ("forwarded by a hop", "end user, forged header"):
        assert untrusting.record(name) == ("127.0.0.1", route, 200), f"{name}\n{untrusting.logs}"
    assert untrusting.statuses["scrape for the client"] == 403, untrusting.logs


# --------------------------------------------------------------------------- another network trusted

OTHER_NETWORK_PLAN = (
    direct("straight to the app, forged", TRUSTED_HOP, (XFF, CLIENT)),
    direct("straight to the app, forged chain", TRUSTED_HOP, (XFF, f"{CLIENT}, 10.0.0.1")),
    via_nginx("through nginx", TRUSTED_HOP, (XFF, CLIENT)),
    direct("scrape straight to the app, forged", TRUSTED_HOP, (XFF, CLIENT), metrics=True),
)


@pytest.fixture(scope="module")
def other_network(side: Side, nginx: str, tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    """trusted_proxies=10.0.0.0/8: neither the direct peer nor nginx is trusted."""
    workdir = tmp_path_factory.mktemp(f"other-network-{side.name}")
    env = {"AEGIS_TRUSTED_PROXIES": "10.0.0.0/8", **SCRAPES_FROM_CLIENT_NETWORK}
    return deploy(side, nginx, workdir, OTHER_NETWORK_PLAN, env)


def test_a_peer_outside_trusted_proxies_is_recorded_as_itself(other_network: Outcome) -> None:
    """A forged header sent straight to the app by 127.0.0.1 (not in 10.0.0.0/8) is
    ignored, even when its last entry names a trusted address; so is nginx's."""
    route = other_network.side.route
    for name in (
        "straight to the app, forged",
        "straight to the app, forged chain",
        "through nginx",
    ):
        assert other_network.record(name) == ("127.0.0.1", route, 200), (
            f"{name}\n{other_network.logs}"
        )
    assert other_network.statuses["scrape straight to the app, forged"] == 403, other_network.logs


# --------------------------------------------------------------------------- RFC 7239

FORWARDED_PLAN = (
    via_nginx(
        "forwarded by a trusted hop",
        TRUSTED_HOP,
        (FORWARDED, f"for={CLIENT};proto=https"),
        (XFF, OTHER),  # not the configured header: never read
    ),
    via_nginx("chain via a trusted hop", TRUSTED_HOP, (FORWARDED, f"for={OTHER}, for={CLIENT}")),
    via_nginx("IPv6 via a trusted hop", TRUSTED_HOP, (FORWARDED, 'for="[2001:db8::17]:4711"')),
    via_nginx("trusted hop, X-Forwarded-For only", TRUSTED_HOP, (XFF, CLIENT)),
    via_nginx("end user, forged header", END_USER, (FORWARDED, f"for={CLIENT}")),
    via_nginx("scrape for the client", TRUSTED_HOP, (FORWARDED, f"for={CLIENT}"), metrics=True),
    via_nginx("scrape, X-Forwarded-For only", TRUSTED_HOP, (XFF, CLIENT), metrics=True),
    via_nginx(
        "scrape by an end user, forged", END_USER, (FORWARDED, f"for={CLIENT}"), metrics=True
    ),
)


@pytest.fixture(scope="module")
def forwarded(side: Side, nginx: str, tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    """forwarded_header=forwarded behind nginx, which appends 'for=<who connected>'."""
    workdir = tmp_path_factory.mktemp(f"forwarded-{side.name}")
    env = {**TRUST_NGINX, "AEGIS_FORWARDED_HEADER": "forwarded", **SCRAPES_FROM_CLIENT_NETWORK}
    return deploy(side, nginx, workdir, FORWARDED_PLAN, env)


def test_rfc7239_forwarded_through_nginx(forwarded: Outcome) -> None:
    """The for= elements walk like X-Forwarded-For entries (quoted, bracketed IPv6 with a
    port included); X-Forwarded-For is not consulted; allow_ips sees the same client."""
    route = forwarded.side.route
    expected = {
        "forwarded by a trusted hop": (CLIENT, route, 200),
        "chain via a trusted hop": (CLIENT, route, 200),
        "IPv6 via a trusted hop": ("2001:db8::17", route, 200),
        "trusted hop, X-Forwarded-For only": (TRUSTED_HOP, route, 200),
        "end user, forged header": (END_USER, route, 200),
    }
    assert {name: forwarded.record(name) for name in expected} == expected, forwarded.logs
    assert [
        forwarded.statuses[name]
        for name in (
            "scrape for the client",
            "scrape, X-Forwarded-For only",
            "scrape by an end user, forged",
        )
    ] == [200, 403, 403], forwarded.logs


# --------------------------------------------------------------------------- every deployment


def test_each_request_is_stored_once_and_scrapes_never(
    trusted: Outcome, untrusting: Outcome, other_network: Outcome, forwarded: Outcome
) -> None:
    """One record per item request, whichever gunicorn worker answered; none for
    /metrics (served by aegis_mw) or nginx's own probe."""
    for outcome in (trusted, untrusting, other_network, forwarded):
        items = [sent.name for sent in outcome.plan if not sent.metrics]
        counts = {name: len(outcome.stored.get(name, [])) for name in items}
        assert counts == dict.fromkeys(items, 1), outcome.logs
        assert outcome.strays == [], outcome.logs


# --------------------------------------------------------------------------- uvicorn's own handling


def test_uvicorn_default_proxy_headers_rewrite_the_peer_first(nginx: str, tmp_path: Path) -> None:
    """uvicorn's defaults (--proxy-headers, --forwarded-allow-ips 127.0.0.1,::1) replace
    the ASGI peer from X-Forwarded-For before any middleware runs. aegis_mw, with no
    trusted_proxies at all, then records (and allow_ips admits) whom the header named,
    also for a forged header sent straight to the app from 127.0.0.1. For aegis_mw to
    decide, run uvicorn with --no-proxy-headers (as the tests above do)."""
    # uvicorn's default list, named: a FORWARDED_ALLOW_IPS of the machine's would change it.
    defaults = fastapi_under_uvicorn(FORWARDED_ALLOW_IPS="127.0.0.1,::1")
    side = Side("fastapi-uvicorn-defaults", *FASTAPI, defaults)
    plan = (
        via_nginx("forwarded by a hop", TRUSTED_HOP, (XFF, CLIENT)),
        via_nginx("end user, forged header", END_USER, (XFF, CLIENT)),
        direct("straight to the app, forged", TRUSTED_HOP, (XFF, CLIENT)),
        via_nginx("scrape for the client", TRUSTED_HOP, (XFF, CLIENT), metrics=True),
    )
    outcome = deploy(side, nginx, tmp_path, plan, SCRAPES_FROM_CLIENT_NETWORK)
    expected = {
        "forwarded by a hop": (CLIENT, side.route, 200),
        # uvicorn walks the chain from the right too: nginx appended 127.0.0.2.
        "end user, forged header": (END_USER, side.route, 200),
        "straight to the app, forged": (CLIENT, side.route, 200),
    }
    assert {name: outcome.record(name) for name in expected} == expected, outcome.logs
    assert outcome.statuses["scrape for the client"] == 200, outcome.logs


# --------------------------------------------------------------------------- a proxy on a Unix socket


@pytest.mark.parametrize("python_path", [False, True], ids=["compiled", "python-path"])
@pytest.mark.parametrize(
    ("trusted", "client", "scrape"),
    [
        # nginx vouches for whom it saw: the hop at 127.0.0.1, itself untrusted.
        ("unix", TRUSTED_HOP, 403),
        # ... trusted too: the client that hop forwarded for.
        ("unix,127.0.0.1/32", CLIENT, 200),
        # A connection over the socket has no address: no CIDR can trust it.
        ("127.0.0.1/32", None, 403),
    ],
)
def test_a_proxy_on_a_unix_socket_is_trusted_as_unix(
    nginx: str, tmp_path: Path, trusted: str, client: str | None, scrape: int, python_path: bool
) -> None:
    """nginx -> gunicorn over a Unix socket (the usual deployment): gunicorn's
    REMOTE_ADDR is empty, and only the trusted_proxies entry ``unix`` lets the
    forwarded header be believed, for the record and for allow_ips."""
    socket_path = tmp_path / "app.sock"
    serve = flask_under_gunicorn(
        "-b", f"unix:{socket_path}", **(PYTHON_PATH if python_path else {})
    )
    plan = (
        via_nginx("forwarded over the socket", TRUSTED_HOP, (XFF, CLIENT)),
        via_nginx("scrape over the socket", TRUSTED_HOP, (XFF, CLIENT), metrics=True),
    )
    paths = {"forwarded over the socket": f"{FLASK[0]}/1", "scrape over the socket": "/metrics"}
    env = {"AEGIS_TRUSTED_PROXIES": trusted, **SCRAPES_FROM_CLIENT_NETWORK}
    upstream = f"http://unix:{socket_path}"
    with serve(tmp_path, env) as app, nginx_in_front_of(nginx, upstream, tmp_path) as proxy:

        def logs() -> str:
            return f"{proxy.log()}\n--- gunicorn ---\n{app.output()}"

        statuses = send(plan, paths, proxy.url, f"http://127.0.0.1:{app.port}", logs)
    rows = [row for row in stored_requests(tmp_path / "aegis.db") if row.path == f"{FLASK[0]}/1"]
    assert [(row.client_ip, row.route, row.status) for row in rows] == [(client, FLASK[1], 200)]
    assert statuses["scrape over the socket"] == scrape
