"""The JSON API while its PostgreSQL store is down, under a real uvicorn: reads must
never take the threads the app's own ``def`` endpoints and ``/metrics`` need, a
read fails fast once the store is known to be down (503 with Retry-After), the
outage is logged once, not as a traceback per request, and reads come back
when the store does. The shared PostgreSQL server is never stopped: the store
is a port where nothing listens, a listener that never answers, or a
forwarder to the real server that freezes with its connections open."""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from pathlib import Path

import httpx
import pytest

from tests.endpoints.stores import Forwarder, HungStore, forwarded_url
from tests.harness import OPEN_MONITORING_ENV
from tests.servers import Server, child_environment, free_port, uvicorn_server

pytestmark = pytest.mark.slow

APP = "tests.endpoints.outage_app:app"
READ = "/api/metrics/overview?range=5m"
READERS = 60
#: What the app's own endpoint and a scrape may take while the reads wait.
BOUND = 1.0
WAIT = 60.0


@contextmanager
def store_down(kind: str) -> Iterator[str]:
    """A postgresql:// URL whose server is down: nothing listens on its port
    (``refused``), or a listener accepts and never answers (``hung``)."""
    if kind == "refused":
        yield f"postgresql://postgres@127.0.0.1:{free_port()}/test"
        return
    with closing(HungStore()) as store:
        yield store.url


def start_reads(server: Server, target: str, count: int) -> list[socket.socket]:
    """``count`` requests for ``target``, each on a connection of its own, all
    sent (in the server's socket buffers) when this returns."""
    sockets = []
    for _ in range(count):
        connection = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT)
        request = f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        connection.sendall(request.encode())
        sockets.append(connection)
    return sockets


def read_answer(connection: socket.socket) -> tuple[int, dict[str, str], bytes, float]:
    """Status, headers, body and when (monotonic) the answer was complete."""
    with connection:
        response = http.client.HTTPResponse(connection)
        response.begin()
        body = response.read()
    headers = {name.lower(): value for name, value in response.getheaders()}
    return response.status, headers, body, time.monotonic()


def timed_get(server: Server, target: str) -> tuple[int, float]:
    """Status and seconds of one GET on a new connection: queued behind those
    opened before it, as a new client's is, and timed from the connect (no
    client library set up in the measured time)."""
    started = time.monotonic()
    [connection] = start_reads(server, target, 1)
    status, _, _, done = read_answer(connection)
    return status, done - started


def outage_env(url: str, retry_after: str = "30", **options: str) -> dict[str, str]:
    return child_environment(
        AEGIS_SINK=url,
        AEGIS_METRICS_REGISTRY="none",
        AEGIS_READ_RETRY_AFTER=retry_after,
        **OPEN_MONITORING_ENV,
        **options,
    )


@pytest.mark.parametrize("kind", ["refused", "hung"])
def test_reads_during_an_outage_leave_the_app_its_threads(kind: str, tmp_path: Path) -> None:
    with store_down(kind) as url, uvicorn_server(APP, tmp_path, env=outage_env(url)) as server:
        sockets = start_reads(server, READ, READERS)
        started = time.monotonic()
        with ThreadPoolExecutor(READERS + 2) as pool:
            timed = [pool.submit(timed_get, server, path) for path in ("/plain", "/metrics")]
            answers = list(pool.map(read_answer, sockets))
            plain, scrape = (future.result() for future in timed)
        last = max(done for *_, done in answers) - started
        # The store is known to be down now: the next read fails at once.
        again = timed_get(server, READ)
        log = server.log.text

    figures = f"plain {plain[1]:.3f} s, /metrics {scrape[1]:.3f} s, last read {last:.3f} s"
    print(f"\n{kind}: {figures}, a read once known down {again[1]:.3f} s")
    assert plain[0] == 200 and plain[1] < BOUND, figures
    assert scrape[0] == 200 and scrape[1] < BOUND, figures
    for status, headers, text, _ in answers:
        body = json.loads(text)
        assert status == 503, body
        assert body["error"]["code"] in ("storage_unavailable", "busy"), body
        assert int(headers["retry-after"]) >= 1, headers
    # The first reads give up after read_timeout (2 s), the rest at once.
    assert last < 2.0 + 3.0, figures
    assert again[0] == 503 and again[1] < 0.5, again
    assert "Traceback" not in log, log
    assert log.count("cannot be read") == 1, log


def test_reads_come_back_with_the_store(postgres_url: str, tmp_path: Path) -> None:
    """Refused, then served through a forwarder to the real server: after the
    retry interval one read tries the store again, and reads work again."""
    port = free_port()
    url, real = forwarded_url(postgres_url, port)
    env = outage_env(url, retry_after="1")
    with uvicorn_server(APP, tmp_path, env=env) as server:
        first = httpx.get(f"{server.url}{READ}", timeout=WAIT)
        assert first.status_code == 503
        assert first.json()["error"]["code"] == "storage_unavailable"
        with closing(Forwarder(port, real)):
            deadline = time.monotonic() + WAIT
            while True:
                answer = httpx.get(f"{server.url}{READ}", timeout=WAIT)
                if answer.status_code == 200 or time.monotonic() > deadline:
                    break
                assert answer.json()["error"]["code"] == "storage_unavailable"
                assert int(answer.headers["retry-after"]) >= 1
                time.sleep(0.1)  # polling a condition with a deadline: the retry interval passes
            assert answer.status_code == 200, answer.text
            assert answer.json()["data"]["total"] == 0
            # Logged before the answer, but read from the server's stderr by
            # a thread of ours: waited for, not assumed there.
            assert server.log.wait_for("can be read again", WAIT), server.log.text
            log = server.log.text
    assert "Traceback" not in log, log
    assert log.count("cannot be read") == 1, log
    assert log.count("can be read again") == 1, log


def test_a_store_that_hangs_with_a_pooled_connection_open_is_answered_in_time(
    postgres_url: str, tmp_path: Path
) -> None:
    """A read first leaves a connection in the read pool; then the server hangs
    (its connections stay open, nothing comes back, its statement timeout never
    fires). The next read is answered 503 within ``read_timeout`` of the
    connection's check, the ones after it at once, and the app is unaffected."""
    port = free_port()
    url, real = forwarded_url(postgres_url, port)
    with closing(Forwarder(port, real)) as forwarder:
        env = outage_env(url, AEGIS_READ_TIMEOUT="1")
        with uvicorn_server(APP, tmp_path, env=env) as server:
            assert timed_get(server, READ)[0] == 200
            forwarder.freeze()
            status, took = timed_get(server, READ)  # the client gives up after WAIT
            again = timed_get(server, READ)
            plain = timed_get(server, "/plain")
            log = server.log.text
    figures = f"a read {took:.3f} s, the next {again[1]:.3f} s, /plain {plain[1]:.3f} s"
    print(f"\nfrozen: {figures}")
    assert status == 503 and took < 1.0 + 3.0, figures
    assert again[0] == 503 and again[1] < 0.5, figures
    assert plain[0] == 200 and plain[1] < BOUND, figures
    assert "Traceback" not in log, log
    assert log.count("cannot be read") == 1, log
