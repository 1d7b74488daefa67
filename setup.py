"""Build hook for the one compiled module; everything else is in pyproject.toml.

``aegis_mw._hotpath`` is the HTTP request path of the ASGI and the WSGI
middleware in C (``aegis_mw/_hotpath_c/``). It is optional: where it cannot be
built (no compiler, PyPy) the package installs without it and the middlewares
run their pure-Python paths, which behave the same, only slower.
"""

import platform
import sys
from pathlib import Path

from setuptools import Extension, setup

SOURCES = Path("aegis_mw/_hotpath_c")

ext_modules = []
if platform.python_implementation() == "CPython":
    ext_modules.append(
        Extension(
            "aegis_mw._hotpath",
            sources=sorted(str(path) for path in SOURCES.glob("*.c")),
            depends=[str(SOURCES / "hotpath.h")],
            # The compiled finalizer computes histogram buckets as Python does,
            # rounding for rounding: no fused multiply-add where the C
            # compiler would otherwise contract one (MSVC does not by default).
            extra_compile_args=[] if sys.platform == "win32" else ["-ffp-contract=off"],
            # dlopen/dlsym (sqlite_rows.c): in libc from glibc 2.34, in libdl before.
            libraries=["dl"] if sys.platform.startswith("linux") else [],
            optional=True,
        )
    )

setup(ext_modules=ext_modules)
