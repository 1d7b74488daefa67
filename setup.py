"""Build hook for the one compiled module; everything else is in pyproject.toml.

``aegis_mw.asgi._hotpath`` is the HTTP request path in C
(``aegis_mw/asgi/_hotpath_c/``). It is optional: where
it cannot be built (no compiler, PyPy) the package installs without it and the
middleware runs the pure-Python path, which behaves the same, only slower.
"""

import platform
from pathlib import Path

from setuptools import Extension, setup

SOURCES = Path("aegis_mw/asgi/_hotpath_c")

ext_modules = []
if platform.python_implementation() == "CPython":
    ext_modules.append(
        Extension(
            "aegis_mw.asgi._hotpath",
            sources=sorted(str(path) for path in SOURCES.glob("*.c")),
            depends=[str(SOURCES / "hotpath.h")],
            optional=True,
        )
    )

setup(ext_modules=ext_modules)
