"""FastAPI: the same one call as Starlette (a FastAPI app is one)."""

from __future__ import annotations

from .starlette import install

__all__ = ["install"]
