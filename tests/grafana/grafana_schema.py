"""A dashboard judged by Grafana's own schema, as grafana-foundation-sdk carries it.

The SDK's Python models are generated from the CUE schemas Grafana validates
dashboards with (the dashboard, each panel plugin's options and field config,
each data source's query). Its ``from_json`` alone checks nothing: it copies
what it recognises, passes values through untyped and drops what it does not
know. So a dashboard is judged here in two passes over what it decodes to:

- **types**: every attribute is checked against the model's annotations
  (``str``, ``int``, ``bool``, enums by value, literals, lists, unions, nested
  models), decoding nested mappings the SDK left raw (links, transformations)
  with their own model;
- **nothing dropped**: the decoded dashboard, encoded again, must contain every
  key and value of the original, so a misspelt or unknown field, or an option
  a panel plugin does not have, is reported with its path.

A panel whose plugin has no model in the SDK, or a query whose data source has
none, is a problem too, except where the caller passes a check of its own (the
SDK has no model of Grafana's SQL queries: see ``test_dashboards.py``).
``__inputs`` and ``__requires`` are the export format's, not the dashboard
schema's: they are left to the caller.
"""

from __future__ import annotations

import enum
import json
import sys
import types
import typing
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import REQUIRE_SERVICES

Problems = list[str]
UnknownQuery = Callable[[dict[str, Any], str], Problems]


def sdk() -> Any:
    """The SDK's package, its plugins registered. It needs Python 3.11 (the dev extra
    installs it there); missing on a newer Python: a failure in CI, a skip elsewhere."""
    if sys.version_info < (3, 11):
        pytest.skip("grafana-foundation-sdk needs Python 3.11 or later")
    try:
        import grafana_foundation_sdk
        from grafana_foundation_sdk.cog.plugins import register_default_plugins
    except ImportError:
        message = "grafana-foundation-sdk is not installed (pip install -e '.[dev]')"
        if REQUIRE_SERVICES:
            pytest.fail(message)
        pytest.skip(message)
    register_default_plugins()  # idempotent: a registry keyed by plugin id
    return grafana_foundation_sdk


def dashboard_problems(data: dict[str, Any], unknown_query: UnknownQuery | None = None) -> Problems:
    """What Grafana's schema finds wrong in ``data`` (a dashboard's JSON), as
    ``path: problem`` lines; empty when nothing."""
    sdk()
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models.dashboard import Dashboard

    body = {key: value for key, value in data.items() if not key.startswith("__")}
    try:
        model = Dashboard.from_json(body)
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        return [f"$: does not decode: {type(exc).__name__}: {exc}"]
    checker = _Checker(unknown_query)
    checker.model(model, "$")
    encoded = json.loads(json.dumps(model, cls=JSONEncoder))
    checker.contained(body, encoded, "$")
    return checker.problems


class _Checker:
    def __init__(self, unknown_query: UnknownQuery | None) -> None:
        self.problems: Problems = []
        self.unknown_query = unknown_query

    # -- types ---------------------------------------------------------------------
    def model(self, obj: Any, path: str) -> None:
        from grafana_foundation_sdk.cog import runtime
        from grafana_foundation_sdk.models.dashboard import Panel

        if isinstance(obj, runtime.UnknownDataquery):
            if self.unknown_query is None:
                self.problems.append(f"{path}: a query of a data source the SDK has no model of")
            else:
                self.problems += self.unknown_query(obj.data, path)
            return
        if isinstance(obj, Panel) and runtime.panelcfg_config(obj.type_val) is None:
            self.problems.append(f"{path}: panel type {obj.type_val!r} has no schema")
        for name, hint in typing.get_type_hints(type(obj)).items():
            self.value(getattr(obj, name), hint, f"{path}.{name}")

    def value(self, value: Any, hint: Any, path: str) -> None:
        problem = self._mismatch(value, hint, path)
        if problem:
            self.problems.append(f"{path}: {problem}")

    def _mismatch(self, value: Any, hint: Any, path: str) -> str | None:
        """Why ``value`` does not fit ``hint`` (None when it does; nested
        problems are recorded as they are found)."""
        from grafana_foundation_sdk.cog.variants import Dataquery

        origin = typing.get_origin(hint)
        if hint is Any or hint is object:
            if _is_model(value):
                self.model(value, path)
            return None
        if origin in (typing.Union, types.UnionType):
            # The first member the value fits decides; its nested problems are kept.
            for member in typing.get_args(hint):
                trial = _Checker(self.unknown_query)
                if trial._mismatch(value, member, path) is None:
                    self.problems += trial.problems
                    return None
            return f"{value!r} is none of {hint}"
        if origin is typing.Literal:
            allowed = typing.get_args(hint)
            return None if value in allowed else f"{value!r} is not one of {allowed}"
        if origin is list:
            if not isinstance(value, list):
                return f"a list expected, not {value!r}"
            (item,) = typing.get_args(hint) or (Any,)
            for index, element in enumerate(value):
                self.value(element, item, f"{path}[{index}]")
            return None
        if origin is dict:
            if not isinstance(value, dict):
                return f"an object expected, not {value!r}"
            _, item = typing.get_args(hint) or (str, Any)
            for key, element in value.items():
                self.value(element, item, f"{path}.{key}")
            return None
        if hint is type(None):
            return None if value is None else f"null expected, not {value!r}"
        if isinstance(hint, type) and issubclass(hint, enum.Enum):
            allowed = [member.value for member in hint]
            if isinstance(value, bool) or value not in allowed:
                return f"{value!r} is not one of {allowed}"
            return None
        if hint is bool:
            return None if isinstance(value, bool) else f"a boolean expected, not {value!r}"
        if hint is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
            return None if ok else f"an integer expected, not {value!r}"
        if hint is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            return None if ok else f"a number expected, not {value!r}"
        if hint is str:
            return None if isinstance(value, str) else f"a string expected, not {value!r}"
        if hint is Dataquery:
            if not isinstance(value, Dataquery):
                return f"a query expected, not {value!r}"
            self.model(value, path)
            return None
        if isinstance(hint, type) and hasattr(hint, "from_json"):
            if isinstance(value, hint):
                self.model(value, path)
                return None
            if isinstance(value, dict):
                # Left raw by the SDK's decoder (panel links, transformations): decoded here.
                decoded = hint.from_json(value)
                self.model(decoded, path)
                self.contained(value, _encoded(decoded), path)
                return None
            return f"a {hint.__name__} expected, not {value!r}"
        return f"no check for the type {hint!r}"

    # -- nothing dropped -----------------------------------------------------------
    def contained(self, original: Any, encoded: Any, path: str) -> None:
        """Every key and value of ``original`` is in ``encoded`` unchanged."""
        if isinstance(original, dict):
            if not isinstance(encoded, dict):
                self.problems.append(f"{path}: an object became {encoded!r}")
                return
            for key, value in original.items():
                if key not in encoded:
                    self.problems.append(f"{path}.{key}: not in Grafana's schema here")
                else:
                    self.contained(value, encoded[key], f"{path}.{key}")
        elif isinstance(original, list):
            if not isinstance(encoded, list) or len(encoded) != len(original):
                self.problems.append(f"{path}: a list became {encoded!r}")
                return
            for index, (left, right) in enumerate(zip(original, encoded, strict=True)):
                self.contained(left, right, f"{path}[{index}]")
        elif original != encoded or (
            type(original) is not type(encoded) and not _both_numbers(original, encoded)
        ):
            # A value changed, or changed type (True and 1 are equal in Python).
            self.problems.append(f"{path}: {original!r} became {encoded!r}")


def _is_model(value: Any) -> bool:
    return type(value).__module__.startswith("grafana_foundation_sdk.") and hasattr(
        value, "to_json"
    )


def _encoded(model: Any) -> Any:
    from grafana_foundation_sdk.cog.encoder import JSONEncoder

    return json.loads(json.dumps(model, cls=JSONEncoder))


def _both_numbers(left: Any, right: Any) -> bool:
    return all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (left, right))
