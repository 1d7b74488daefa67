"""What bench/wsgi.py and bench/django.py share: the environ a server hands
an app, driving a WSGI callable as a server does, and the report table."""

from __future__ import annotations

import io
import statistics
import sys
from collections.abc import Callable, Mapping
from importlib import metadata
from typing import Any


def drop_batch(batch: Any) -> None:
    return None


def make_environ(path: str) -> dict[str, Any]:
    """What a server hands the app for a GET without a body."""
    return {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "bench",
        "HTTP_USER_AGENT": "bench",
        "HTTP_ACCEPT": "*/*",
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": "50000",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }


def run_chunk(app: Callable[..., Any], environs: list[dict[str, Any]], count: int) -> int:
    """``count`` requests through ``app``, as a server drives it; the number of 200s."""
    ok = 0
    statuses: list[str] = []
    append = statuses.append

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Callable[..., Any]:
        append(status)
        return drop_batch

    for index in range(count):
        result = app(dict(environs[index & 1]), start_response)
        try:
            for _chunk in result:
                pass
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
    for status in statuses:
        ok += status.startswith("200")
    return ok


def version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def report(
    results: Mapping[str, Mapping[str, list[float]]],
    variants: Mapping[str, tuple[str, str]],
    *,
    title: str,
    target_rows: tuple[str, ...],
    target_us: float,
    bare: str,
    peer: tuple[str, str],
) -> None:
    """The table: per variant (label, baseline key), medians over rounds of µs
    per request and of the overhead against its baseline in the same round;
    then the target's verdicts and the peer's (key, name) overhead."""
    print(f"\n{title}\n")
    header = (
        f"{'variant':48} {'CPU us':>8} {'overhead':>9} {'ratio':>6} {'wall us':>8} {'overhead':>9}"
    )
    print(header)
    print("-" * len(header))
    overheads: dict[str, float] = {}
    for key, clocks in results.items():
        label, baseline = variants[key]
        cells = []
        ratio = 1.0
        for clock in ("cpu", "wall"):
            runs, bases = clocks[clock], results[baseline][clock]
            extra = statistics.median(run - base for run, base in zip(runs, bases, strict=True))
            cells.append((statistics.median(runs), extra))
            if clock == "cpu":
                overheads[key] = extra
                ratio = statistics.median(run / base for run, base in zip(runs, bases, strict=True))
        (cpu, cpu_extra), (wall, wall_extra) = cells
        print(
            f"{label:48} {cpu:>8.2f} {cpu_extra:>+9.2f} {ratio:>6.3f} {wall:>8.2f} {wall_extra:>+9.2f}"
        )
    print()
    for key in target_rows:
        if key in overheads:
            verdict = "PASS" if overheads[key] <= target_us else "FAIL"
            print(
                f"target (<= {target_us:.0f} us over {bare}, CPU): {variants[key][0]}: "
                f"{overheads[key]:+.2f} us -> {verdict}"
            )
    peer_key, peer_name = peer
    if peer_key in overheads:
        print(f"for comparison, {peer_name}: {overheads[peer_key]:+.2f} us")
