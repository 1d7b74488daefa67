"""Per-request overhead of the Django middleware and its peer over bare Django.

Target: at most 3 us per request over bare Django, side by side with
django-prometheus.

Django is configured once per process, so every variant is a child process
(this file again, with ``--variant``) holding one Django project, all pinned
to the same single CPU. A child calls ``get_wsgi_application()`` in-process as
a WSGI server calls it: a fresh copy of a prepared environ per request,
``start_response`` collecting the status, the response iterable consumed and
``close()`` called (Django's ``request_finished``, and where aegis_mw queues
its record). No server, no sockets: the figure is what the framework and the
middleware cost. Requests alternate between two views, ``items/<int:item_id>``
(a short ``HttpResponse``) and ``health-like`` (a small ``JsonResponse``), the
same in every project: ``DEBUG = False``, no database (``DATABASES = {}``), only
the apps a variant needs.

Variants (each compared with bare Django):

- bare Django (no middleware, no apps);
- Django + ``aegis_mw.contrib.django`` (its app, ``AegisMiddleware``,
  ``AEGIS = {"sink": "memory://", ...}``; the compiled request path, the
  default on CPython);
- the same with a sink that drops every batch (``"sink": <a function>``);
- the same (``memory://``) on the pure-Python request path (``speedups=False``);
- the same (``memory://``) "all-in": with the flusher's work charged;
- Django + django-prometheus (its app, ``PrometheusBeforeMiddleware`` first
  and ``PrometheusAfterMiddleware`` last, the default registry).

The aegis pipelines use ``metrics_registry="none"`` and ignore ``AEGIS_*``
environment variables (``environ={}``). The flusher's background work is
excluded from the "request path" rows, as in ``wsgi.py``: the flusher is held
back (one-hour interval, batches of 1,000,000) and flushed untimed after each
chunk (``pipeline.force_flush``), so a row is what a request pays on its own
thread (including what the waiting items cost the garbage collector). The
"all-in" row flushes inside the timed chunk: with the processes pinned to one
CPU and process CPU time counting every thread, it is charged all the
background work (building records, rollups, the memory sink's writes).

The children start, warm up and check their records (or counters) first. Then
each round the parent asks every child, one at a time in an order rotating
from round to round, for one chunk of ``--requests`` requests, run after a
``gc.collect()``; the child answers with one JSON line on stdout. Two clocks,
measured in the child: process CPU time (``time.process_time``, every thread;
the main figure) and wall time (``time.perf_counter``). Per variant the report
gives the median over rounds of the per-request cost, and the median over
rounds of its cost minus bare Django's in the same round.

    python bench/django.py                          # about a minute
    python bench/django.py --quick                  # about 15 seconds
    python bench/django.py --rounds 51 --requests 8000
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import select
import shlex
import subprocess
import sys
import time
import types
from collections.abc import Callable
from typing import Any

import wsgi_common
from wsgi_common import drop_batch, make_environ, run_chunk, version

HERE = os.path.dirname(os.path.abspath(__file__))
# Run as a script, this file's directory comes first on sys.path, where this
# file would stand in for the django package itself.
sys.path[:] = [entry for entry in sys.path if os.path.abspath(entry or os.curdir) != HERE]

TARGET_US = 3.0
ITEM_PATH = "/items/42"
HEALTH_PATH = "/health-like"
ITEM_BODY = b"item 42"
HEALTH_BODY = b'{"status": "ok"}'
ROUTES = ["/health-like", "/items/{item_id}"]
URLCONF = "bench_django_urls"
#: Seconds a child may take to start and warm up, and to answer a round (plus
#: a millisecond a request).
START_TIMEOUT = 120.0
ROUND_TIMEOUT = 60.0

#: key: label
VARIANTS: dict[str, str] = {
    "django": "bare Django",
    "django_aegis": "Django + aegis_mw (memory://), request path",
    "django_aegis_drop": "Django + aegis_mw (dropping sink), request path",
    "django_aegis_python": "Django + aegis_mw (memory://), pure-Python path",
    "django_aegis_all_in": "Django + aegis_mw (memory://), all-in",
    "django_prometheus": "Django + django-prometheus",
}
BASELINE = "django"
#: The rows the target applies to.
TARGET_ROWS = ("django_aegis", "django_aegis_drop")
#: Request-path options: the flusher waits for the untimed flush after a chunk.
HELD_BACK = {"flush_interval": 3600, "batch_size": 1_000_000, "environ": {}}


def project_settings(key: str) -> dict[str, Any]:
    """The variant's settings: the same project, plus what the variant adds."""
    options: dict[str, Any] = {
        "SECRET_KEY": "bench-only-not-secret",
        "DEBUG": False,
        "ALLOWED_HOSTS": ["bench"],
        "ROOT_URLCONF": URLCONF,
        "INSTALLED_APPS": [],
        "MIDDLEWARE": [],
        "DATABASES": {},
        "USE_TZ": True,
    }
    if key.startswith("django_aegis"):
        sink: Any = drop_batch if key == "django_aegis_drop" else "memory://"
        options["INSTALLED_APPS"] = ["aegis_mw.contrib.django"]
        options["MIDDLEWARE"] = ["aegis_mw.contrib.django.AegisMiddleware"]
        options["AEGIS"] = {
            "sink": sink,
            "metrics_registry": "none",
            "speedups": key != "django_aegis_python",
            **HELD_BACK,
        }
    elif key == "django_prometheus":
        options["INSTALLED_APPS"] = ["django_prometheus"]
        options["MIDDLEWARE"] = [
            "django_prometheus.middleware.PrometheusBeforeMiddleware",
            "django_prometheus.middleware.PrometheusAfterMiddleware",
        ]
    return options


def install_urls() -> None:
    """The URLconf every variant routes with, as a module of its own."""
    from django.http import HttpRequest, HttpResponse, JsonResponse
    from django.urls import path

    def item(request: HttpRequest, item_id: int) -> HttpResponse:
        return HttpResponse(f"item {item_id}")

    def health_like(request: HttpRequest) -> JsonResponse:
        return JsonResponse({"status": "ok"})

    module = types.ModuleType(URLCONF)
    module.urlpatterns = [  # type: ignore[attr-defined]
        path("items/<int:item_id>", item, name="item"),
        path("health-like", health_like, name="health-like"),
    ]
    sys.modules[URLCONF] = module


class Project:
    """One variant's Django project: its WSGI callable and its pipeline (if any)."""

    def __init__(self, key: str) -> None:
        from django.conf import settings

        settings.configure(**project_settings(key))
        install_urls()
        from django.core.wsgi import get_wsgi_application

        self.key = key
        self.app: Callable[..., Any] = get_wsgi_application()  # builds the middleware
        self.pipeline: Any = None
        self.memory: Any = None
        if key.startswith("django_aegis"):
            from django.apps import apps

            self.pipeline = apps.get_app_config("aegis_mw").pipeline
            if self.pipeline.sinks[0].name == "memory":
                self.memory = self.pipeline.sinks[0]
        self.all_in = key.endswith("all_in")
        self.served = 0
        self.recorded = 0

    def flush(self) -> None:
        """Write what the chunk recorded (timed only for the all-in row)."""
        if self.pipeline is not None and not self.pipeline.force_flush(60):
            raise SystemExit(f"{self.key}: aegis flush failed: {self.pipeline.stats()}")

    def empty_sink(self) -> None:
        """Count and drop what the memory sink holds (never timed)."""
        if self.memory is not None:
            self.recorded += len(self.memory.requests)
            self.memory.clear()

    def counted(self) -> float | None:
        """Requests django-prometheus counted, if it is in the project."""
        if self.key != "django_prometheus":
            return None
        from prometheus_client import REGISTRY

        return REGISTRY.get_sample_value("django_http_requests_before_middlewares_total")

    def losses(self) -> str:
        """What the pipeline dropped or failed to write, or ``""``."""
        if self.pipeline is None:
            return ""
        stats = self.pipeline.stats()
        lost = sum(stats.dropped.values()) + sum(
            sum(sink.dropped.values()) + sink.errors for sink in stats.sinks
        )
        return f"records lost: {stats}" if lost or stats.flusher_errors else ""


def check(project: Project, environs: list[dict[str, Any]]) -> None:
    """Both views answer their bodies; the memory sink holds one record each, routed."""
    bodies = []
    statuses: list[str] = []

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Callable[..., Any]:
        statuses.append(status)
        return drop_batch

    for environ in environs:
        result = project.app(dict(environ), start_response)
        try:
            bodies.append(b"".join(result))
        finally:
            result.close()
    project.served += len(environs)
    if statuses != ["200 OK"] * len(environs):
        raise SystemExit(f"{project.key}: unexpected statuses {statuses}")
    if bodies != [ITEM_BODY, HEALTH_BODY]:
        raise SystemExit(f"{project.key}: unexpected bodies {bodies}")
    if project.memory is not None:
        project.flush()
        routes = sorted(record.route for record in project.memory.requests)
        if routes != ROUTES:
            raise SystemExit(f"{project.key}: unexpected records {routes}")
        project.memory.clear()


def child(key: str, rounds: int, requests: int) -> None:
    """Serve the parent: a JSON line when ready, one per round, one when done."""
    out = sys.stdout
    sys.stdout = sys.stderr  # stdout carries the answers and nothing else

    def answer(message: dict[str, Any]) -> None:
        out.write(json.dumps(message) + "\n")
        out.flush()

    project: Project | None = None
    try:
        project = Project(key)
        environs = [make_environ(ITEM_PATH), make_environ(HEALTH_PATH)]
        warm_up = max(requests, 2000)
        # Warm up: build the stack, fill caches, start the flusher.
        if run_chunk(project.app, environs, warm_up) != warm_up:
            raise SystemExit(f"{key}: not every request answered 200")
        project.served += warm_up
        project.flush()
        project.empty_sink()
        check(project, environs)
        project.recorded = 0
        answer({"ready": key})
        for _ in range(rounds + 1):
            command = sys.stdin.readline().strip()
            if not command:  # the parent went away: nobody to answer
                return
            if command != "round":  # "done"
                break
            gc.collect()
            cpu_started = time.process_time()
            started = time.perf_counter()
            ok = run_chunk(project.app, environs, requests)
            if project.all_in:
                project.flush()
            elapsed = time.perf_counter() - started
            cpu = time.process_time() - cpu_started
            if not project.all_in:
                project.flush()
            project.empty_sink()
            project.served += requests
            if ok != requests:
                raise SystemExit(f"{key}: {ok} of {requests} requests answered 200")
            answer({"cpu": cpu / requests * 1e6, "wall": elapsed / requests * 1e6})
        measured = project.served - warm_up - 2
        if project.memory is not None and project.recorded != measured:
            raise SystemExit(f"{key}: {project.recorded} of {measured} requests recorded")
        counted = project.counted()
        if counted is not None and counted != project.served:
            raise SystemExit(f"{key}: django-prometheus counted {counted} of {project.served}")
        if project.losses():
            raise SystemExit(f"{key}: {project.losses()}")
        answer({"done": key, "served": project.served})
    except BrokenPipeError:  # the parent went away: nobody to answer
        raise SystemExit(1) from None
    except SystemExit as exc:
        answer({"error": str(exc)})
        raise SystemExit(1) from None
    except BaseException as exc:
        answer({"error": f"{key}: {type(exc).__name__}: {exc}"})
        raise
    finally:
        if project is not None and project.pipeline is not None:
            project.pipeline.shutdown(10)


# --------------------------------------------------------------- parent side


class Child:
    """A variant's process, and the JSON lines it answers on its stdout."""

    def __init__(self, key: str, rounds: int, requests: int) -> None:
        self.key = key
        self.buffer = b""
        command = [sys.executable, os.path.abspath(__file__), "--variant", key]
        command += ["--rounds", str(rounds), "--requests", str(requests)]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def send(self, command: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(command.encode() + b"\n")
        self.process.stdin.flush()

    def receive(self, timeout: float) -> dict[str, Any]:
        """The next line, within ``timeout`` seconds; an error answer ends the run."""
        assert self.process.stdout is not None
        descriptor = self.process.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SystemExit(f"{self.key}: no answer within {timeout:.0f} s")
            readable, _, _ = select.select([descriptor], [], [], remaining)
            if readable:
                data = os.read(descriptor, 65536)
                if not data:
                    self.process.wait(10)
                    raise SystemExit(f"{self.key}: exited with {self.process.returncode}")
                self.buffer += data
        line, _, self.buffer = self.buffer.partition(b"\n")
        message: dict[str, Any] = json.loads(line)
        if "error" in message:
            raise SystemExit(message["error"])
        return message

    def close(self) -> None:
        """Let it end on its own (stdin closed), then kill it if it will not."""
        try:
            if self.process.stdin is not None and not self.process.stdin.closed:
                self.process.stdin.close()
        except OSError:
            pass
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(15)
        if self.process.stdout is not None:
            self.process.stdout.close()


def measure(keys: list[str], rounds: int, requests: int) -> dict[str, dict[str, list[float]]]:
    children: dict[str, Child] = {}
    results = {key: {"cpu": [], "wall": []} for key in keys}
    try:
        for key in keys:  # started together, warmed up one at a time
            children[key] = Child(key, rounds, requests)
        for child in children.values():
            child.receive(START_TIMEOUT)
        timeout = ROUND_TIMEOUT + requests / 1000
        for round_number in range(rounds):
            shift = round_number % len(keys)
            for key in keys[shift:] + keys[:shift]:
                children[key].send("round")
                answer = children[key].receive(timeout)
                results[key]["cpu"].append(answer["cpu"])
                results[key]["wall"].append(answer["wall"])
        for child in children.values():
            child.send("done")
            child.receive(ROUND_TIMEOUT)
    finally:
        for child in children.values():
            child.close()
    return results


def report(results: dict[str, dict[str, list[float]]], rounds: int, requests: int) -> None:
    wsgi_common.report(
        results, {key: (label, BASELINE) for key, label in VARIANTS.items()},
        title=f"Django WSGI in-process, {rounds} rounds x {requests} requests per variant; "
        "medians of per-round figures (overhead against bare Django in the same round)",
        target_rows=TARGET_ROWS, target_us=TARGET_US, bare="bare Django",
        peer=("django_prometheus", "django-prometheus"),
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=None, help="default 31 (--quick: 9)")
    parser.add_argument(
        "--requests",
        type=int,
        default=None,
        help="per variant per round; default 5000 (--quick: 3000)",
    )
    parser.add_argument("--quick", action="store_true", help="a quick look, about 15 seconds")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--variant", choices=list(VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    rounds = args.rounds if args.rounds is not None else (9 if args.quick else 31)
    requests = args.requests if args.requests is not None else (3000 if args.quick else 5000)
    if rounds < 1 or requests < 1:
        parser.error("--rounds and --requests must be at least 1")
    if args.variant is not None:
        child(args.variant, rounds, requests)
        return
    keys = [key for key in VARIANTS if key in args.variants or key == BASELINE]

    print("command:", shlex.join(["python", *sys.argv]))
    print(
        f"Python {platform.python_version()} ({platform.python_implementation()}), "
        f"{platform.system()} {platform.machine()}; Django {version('django')}, "
        f"django-prometheus {version('django-prometheus')}, prometheus_client "
        f"{version('prometheus-client')}, aegis_mw {version('aegis_mw')}"
    )
    if hasattr(os, "sched_setaffinity"):
        # One CPU, set before any child or thread starts (children inherit it):
        # the flusher's work is serialized with the requests (charged, not
        # hidden on another core), and the variants never run at once.
        cpu = sorted(os.sched_getaffinity(0))[-1]
        os.sched_setaffinity(0, {cpu})
        print(f"pinned to CPU {cpu}")
    results = measure(keys, rounds, requests)
    report(results, rounds, requests)


if __name__ == "__main__":
    main()
