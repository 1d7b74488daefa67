"""Per-request overhead in CPU instructions, counted by valgrind's callgrind.

Timings on a shared machine drift with whatever else runs; instruction counts
do not: the same code, inputs and interpreter give the same count every time.
For each variant this runs the app (as in ``overhead.py``) twice under
callgrind, with a short and a long run of requests, and divides the
difference by the extra requests, so start-up and warm-up cancel out. The
Aegis flusher is held back, so the count is the request path, including what
the waiting records cost the garbage collector; a second Aegis row includes
the background work (folding, building records, writing SQLite). After the
warm-up the heap is frozen (``gc.freeze()``), so a full collection scans only
what the requests left, for every variant alike.

Needs ``valgrind`` on PATH (Debian package ``valgrind``).

``--flush-every N`` flushes the all-in rows every N requests of both runs
(N must divide both counts), so their figure holds a flush's fixed costs (its
transaction, commit and rollup rows, its statements) shared by N requests,
as at N requests a second with the default ``flush_interval`` of 1 s.

    python bench/instructions.py                 # about two minutes
    python bench/instructions.py --routes 1 --requests 500 2500
    python bench/instructions.py --routes 1 --flush-every 100 --variants aegis_all_in
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from overhead import LABELS, build_app, make_scopes, run_chunk

COLLECTED = re.compile(r"Collected : ([\d,]+)")


def worker(variant: str, routes: int, requests: int, flush_every: int = 0) -> None:
    with tempfile.TemporaryDirectory() as workdir:
        app, after_chunk = build_app(variant, routes, workdir)
        scopes = make_scopes(routes)

        async def drive() -> None:
            await run_chunk(app, scopes, 300, 0)  # build the stack, fill caches
            after_chunk()
            # Start-up objects out of the collector's way, as a preloading server
            # does: collections then scan what the requests leave behind, and the
            # count does not jump with where a full collection of the whole heap
            # happens to fall.
            gc.collect()
            gc.freeze()
            all_in = variant.startswith("aegis_all_in")
            step = flush_every if flush_every and all_in else requests
            ok = 0
            for offset in range(0, requests, step):
                ok += await run_chunk(app, scopes, step, offset)
                if all_in:
                    after_chunk()
            if ok != requests:
                raise SystemExit(f"{variant}: {ok} of {requests} answered 200")

        asyncio.run(drive())
        # Leave without the atexit flush: for the request-path row the records
        # must stay unwritten (the all-in row flushed inside the measurement).
        sys.stdout.flush()
        os._exit(0)


def count(variant: str, routes: int, requests: int, flush_every: int = 0) -> int:
    command = [
        "valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
        sys.executable, __file__, "--worker", variant, "--routes", str(routes),
        "--count", str(requests), "--flush-every", str(flush_every),
    ]  # fmt: skip
    # A fixed hash seed: string hashing decides dict probe sequences, which
    # otherwise move the count by a few hundred instructions from run to run.
    environment = {**os.environ, "PYTHONHASHSEED": "0"}
    result = subprocess.run(command, capture_output=True, text=True, check=True, env=environment)
    match = COLLECTED.search(result.stderr)
    if match is None:
        raise SystemExit(f"no instruction count from callgrind:\n{result.stderr[-2000:]}")
    return int(match.group(1).replace(",", ""))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--routes", type=int, nargs="*", default=[1, 50])
    parser.add_argument("--requests", type=int, nargs=2, default=[500, 2500])
    parser.add_argument("--variants", nargs="*", default=list(LABELS))
    parser.add_argument(
        "--flush-every", type=int, default=0,
        help="all-in rows: flush every N requests (default: once, after each run)",
    )  # fmt: skip
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.routes[0], args.count, args.flush_every)
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (Debian: apt-get install valgrind)")
    if "bare" not in args.variants:
        args.variants.insert(0, "bare")
    short, long = args.requests
    if args.flush_every and (short % args.flush_every or long % args.flush_every):
        raise SystemExit("--flush-every must divide both request counts")
    rows = []
    for routes in args.routes:
        per_request = {
            variant: (
                count(variant, routes, long, args.flush_every)
                - count(variant, routes, short, args.flush_every)
            )
            / (long - short)
            for variant in args.variants
        }
        for variant, instructions in per_request.items():
            rows.append(
                {
                    "variant": variant,
                    "routes": routes,
                    "instructions": round(instructions),
                    "overhead": round(instructions - per_request["bare"]),
                    "ratio": instructions / per_request["bare"],
                }
            )
    flushes = f", all-in flushed every {args.flush_every}" if args.flush_every else ""
    print(f"\nFastAPI in-process, instructions per request ({long} - {short} requests{flushes})\n")
    header = f"{'variant':42} {'routes':>6} {'instructions':>13} {'overhead':>10} {'ratio':>6}"
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{LABELS[row['variant']]:42} {row['routes']:>6} {row['instructions']:>13,}"
            f" {row['overhead']:>+10,} {row['ratio']:>6.3f}"
        )
    if args.json:
        print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
