"""``bench/history.py`` still runs: a tiny run of every part, SQLite only.

The bench builds its records with ``tuple.__new__`` (no defaults filled), so a
field added to ``RequestRecord`` and not to the bench's traffic left it unable
to write a row, unnoticed until someone wanted the figures. This runs it small
(a round of 10,000 records, 5,000 through the pipeline, a history of 20,000
requests): the figures are not checked, only that every part ran and wrote.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUN_TIMEOUT = 300.0


def test_the_history_bench_runs_every_part() -> None:
    result = subprocess.run(
        [
            sys.executable, str(ROOT / "bench" / "history.py"), "--rounds", "1", "--rate", "2000",
            "--batch-size", "1000", "--pipeline-records", "5000", "--requests", "20000",
            "--calls", "2", "--postgres", "",
        ],
        capture_output=True, text=True, timeout=RUN_TIMEOUT, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    # The ingest table's SQLite row: a write rate and a pipeline rate.
    [ingest] = [line for line in lines if line.startswith("SQLite ")]
    assert len([part for part in ingest.split() if part.replace(",", "").isdigit()]) >= 2
    # The query tables: every overview range answered.
    assert {f"overview('{span}')" for span in ("1h", "24h", "7d")} <= {
        line.split()[0] for line in lines if line.startswith("overview(")
    }
