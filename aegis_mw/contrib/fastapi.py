"""FastAPI: the same one call as Starlette (a FastAPI app is one), and health
checks written as FastAPI dependencies (:func:`dependency_check`)."""

from __future__ import annotations

from .fastapi_checks import DependencyCheck, dependency_check
from .starlette import install

__all__ = ["DependencyCheck", "dependency_check", "install"]
