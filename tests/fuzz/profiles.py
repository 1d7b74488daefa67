"""How much the fuzzer runs: ``AEGIS_FUZZ_PROFILE=ci`` (the default, a bounded
run of a minute or so for all of tests/fuzz/, the same examples on every run:
CI fails on a change, not on the luck of the draw) or ``long`` (by hand, new
random examples on each run, for as long as you like)::

    AEGIS_FUZZ_PROFILE=long .venv/bin/python -m pytest tests/fuzz -p no:randomly \\
        --hypothesis-show-statistics

``AEGIS_FUZZ_EXAMPLES=N`` overrides the number of examples per test.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, Phase, settings

PROFILES = {"ci": 500, "long": 20_000}
PROFILE = os.environ.get("AEGIS_FUZZ_PROFILE", "ci")
if PROFILE not in PROFILES:
    raise ValueError(f"AEGIS_FUZZ_PROFILE={PROFILE!r}: expected one of {sorted(PROFILES)}")

#: The settings of every fuzz test. No example database: a failure prints the
#: example and a blob for @reproduce_failure, which is what a CI log keeps.
FUZZ = settings(
    max_examples=int(os.environ.get("AEGIS_FUZZ_EXAMPLES", PROFILES[PROFILE])),
    deadline=None,  # a worker restarts after a crash: timing says nothing here
    database=None,
    print_blob=True,
    derandomize=PROFILE == "ci",
    # No "explain" phase: it prints the example with parts elided.
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

#: pytest-timeout's limit for one fuzz test: none for the long profile.
TIMEOUT = pytest.mark.timeout(0 if PROFILE == "long" else 900)
