"""The dashboards and rules are in the wheel users install: built with pip from
a copy of the project (the checkout is left as it is), unpacked, and read
there by ``aegis_mw.grafana`` in a child interpreter that imports nothing from
the checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from aegis_mw.grafana import FILES
from tests.servers import ROOT

pytestmark = pytest.mark.slow
BUILD_TIMEOUT = 600
#: What a wheel is built from (pyproject.toml, setup.py and MANIFEST.in decide what goes in).
SOURCES = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "LICENSE", "aegis_mw")


def test_the_wheel_ships_the_files(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(
                ROOT / name, source / name,
                ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyd"),
            )  # fmt: skip
        else:
            shutil.copy2(ROOT / name, source / name)
    wheels = tmp_path / "wheels"
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(wheels),
         str(source)],
        check=True, timeout=BUILD_TIMEOUT, env=env,
    )  # fmt: skip
    (wheel,) = wheels.glob("aegis_mw-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for filename in FILES.values():
            assert f"aegis_mw/grafana/{filename}" in names
        archive.extractall(tmp_path / "installed")

    script = (
        "import aegis_mw, sys\n"
        "from aegis_mw.grafana import FILES, exported\n"
        "sys.stdout.write(aegis_mw.__file__ + '\\n')\n"
        "for name in sorted(FILES): sys.stdout.write(str(len(exported(name))) + '\\n')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
        cwd=tmp_path, env={**env, "PYTHONPATH": str(tmp_path / "installed")}, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    where, *sizes = done.stdout.splitlines()
    assert Path(where).is_relative_to(tmp_path / "installed")
    expected = [
        len((ROOT / "aegis_mw" / "grafana" / FILES[name]).read_text(encoding="utf-8"))
        for name in sorted(FILES)
    ]
    assert [int(size) for size in sizes] == expected
