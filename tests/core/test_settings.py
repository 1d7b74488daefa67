"""AegisSettings: defaults and the validation of every option.

Every test passes ``environ=`` explicitly, so the machine's environment never
leaks in (one test proves that passing it really isolates).
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from aegis_mw import AegisSettings, ConfigError
from aegis_mw.core.config_file import ConfigFileError
from aegis_mw.testing import MemorySink
from tests.core.settings_helpers import (
    ALLOWED,
    DEFAULTS,
    OPTION_NAMES,
    _write_sink,
    assert_config_error,
)

# -- defaults ----------------------------------------------------------------


def test_option_names_are_the_documented_ones() -> None:
    """The option list is exactly the documented one, in declaration order."""
    assert AegisSettings.option_names() == OPTION_NAMES


def test_defaults_with_an_empty_environment() -> None:
    """With no options, no variables and no file every option has its default."""
    settings = AegisSettings.load(environ={})
    assert {name: getattr(settings, name) for name in OPTION_NAMES} == DEFAULTS
    assert dict(settings.sources) == {}
    assert settings == AegisSettings()


def test_defaults_have_the_documented_types() -> None:
    """Numbers come out as int or float as documented, lists as tuples."""
    settings = AegisSettings()
    for name in ("batch_size", "max_buffer", "max_routes", "max_path_length", "max_error_length"):
        assert type(getattr(settings, name)) is int, name
    for name in (
        "flush_interval",
        "sink_timeout",
        "shutdown_timeout",
        "retry_backoff_initial",
        "retry_backoff_max",
        "sample_rate",
        "slow_threshold_ms",
    ):
        assert type(getattr(settings, name)) is float, name


# -- validation of keyword arguments -----------------------------------------

GOOD: list[tuple[str, Any, Any]] = [
    ("ws_path", "/live", "/live"),
    ("ws_path", "", ""),
    ("update_interval", 100, 100),
    ("update_interval", "60000", 60000),
    (
        "ws_allowed_origins",
        "https://Admin.Example.com, http://127.0.0.1:8080/",
        ("https://admin.example.com", "http://127.0.0.1:8080"),
    ),
    ("ws_allowed_origins", ["*"], ("*",)),
    ("ws_max_message_bytes", 256, 256),
    ("ws_max_connections_per_client", "3", 3),
    ("ws_max_connections", 1, 1),
    ("ws_message_rate", 0.5, 0.5),
    ("ws_stall_timeout", "2.5", 2.5),
    ("flush_interval", 2, 2.0),
    ("flush_interval", 0.001, 0.001),
    ("flush_interval", 3600, 3600.0),
    ("flush_interval", " 0.5 ", 0.5),
    ("batch_size", 1, 1),
    ("batch_size", 1_000_000, 1_000_000),
    ("batch_size", "2_000", 2000),
    ("max_buffer", 1, 1),
    ("max_buffer", 100_000_000, 100_000_000),
    ("sink_timeout", 0.25, 0.25),
    ("sink_timeout", 3600, 3600.0),
    ("shutdown_timeout", 0, 0.0),
    ("shutdown_timeout", 3600, 3600.0),
    ("retry_backoff_initial", 0.5, 0.5),
    ("retry_backoff_max", 86400, 86400.0),
    ("sample_rate", 0, 0.0),
    ("sample_rate", 1, 1.0),
    ("sample_rate", "0.25", 0.25),
    ("slow_threshold_ms", 0, 0.0),
    ("slow_threshold_ms", 1e9, 1e9),
    ("exclude_paths", "/health, /static/*,,", ("/health", "/static/*")),
    ("exclude_paths", ["/a", "/b/*"], ("/a", "/b/*")),
    ("exclude_paths", ("/x?",), ("/x?",)),
    ("exclude_paths", [], ()),
    ("trusted_proxies", "10.0.0.0/8, ::1", ("10.0.0.0/8", "::1")),
    ("trusted_proxies", ["192.168.1.7/24", "fd00::/8"], ("192.168.1.7/24", "fd00::/8")),
    ("trusted_proxies", "unix, 10.0.0.0/8", ("unix", "10.0.0.0/8")),
    ("forwarded_header", "Forwarded", "forwarded"),
    ("forwarded_header", "X-Forwarded-For", "x-forwarded-for"),
    ("max_routes", 1, 1),
    ("max_path_length", 16, 16),
    ("max_path_length", 65536, 65536),
    ("max_error_length", 16, 16),
    ("speedups", False, False),
    ("speedups", "off", False),
    ("speedups", " Yes ", True),
    ("speedups", "0", False),
    ("background_niceness", 0, 0),
    ("background_niceness", "19", 19),
    ("health_cache_seconds", 0, 0.0),
    ("health_cache_seconds", "2.5", 2.5),
    ("liveness_max_loop_lag", 0.5, 0.5),
    ("read_timeout", "0.25", 0.25),
    ("read_retry_after", 60, 60.0),
    ("metrics_path", "/internal/metrics", "/internal/metrics"),
    ("metrics_path", "", ""),
    ("health_path", " /healthz ", "/healthz"),
    ("metrics_namespace", "shop_api", "shop_api"),
    ("metrics_labels", {"service": "api"}, (("service", "api"),)),
    ("metrics_labels", "service=api, env=prod", (("env", "prod"), ("service", "api"))),
    ("metrics_labels", "", ()),
    ("metrics_buckets", "0.1, 0.5,1", (0.1, 0.5, 1.0)),
    ("metrics_buckets", [1, 2.5], (1.0, 2.5)),
    ("metrics_registry", "None", "none"),
    ("metrics_registry", None, "none"),
    ("sink", "memory://", ("memory://",)),
    ("sink", "memory://, jsonl:///x.jsonl", ("memory://", "jsonl:///x.jsonl")),
    ("sink", ["memory://", "sqlite:///a.db"], ("memory://", "sqlite:///a.db")),
    ("sink", _write_sink, (_write_sink,)),
]


@pytest.mark.parametrize(("option", "value", "expected"), GOOD)
def test_good_keyword_values_are_accepted_and_coerced(
    option: str, value: Any, expected: Any
) -> None:
    """Valid values are kept, coerced to the option's type (text parsed, lists to tuples)."""
    settings = AegisSettings.load(environ={}, **{option: value})
    result = getattr(settings, option)
    assert result == expected
    assert type(result) is type(expected)
    assert settings.sources == {option: "keyword argument"}


def test_sink_objects_are_kept_as_given() -> None:
    """A sink object, alone or in a list with URLs, is kept by identity."""
    sink = MemorySink()
    assert AegisSettings(sink=sink).sink == (sink,)
    mixed = AegisSettings(sink=[sink, "memory://", _write_sink]).sink
    assert mixed[0] is sink
    assert mixed[1:] == ("memory://", _write_sink)


BAD: list[tuple[str, Any]] = [
    ("flush_interval", 0),
    ("flush_interval", -1.0),
    ("flush_interval", 3600.5),
    ("flush_interval", math.nan),
    ("flush_interval", math.inf),
    ("flush_interval", -math.inf),
    ("flush_interval", True),
    ("flush_interval", "soon"),
    ("flush_interval", None),
    ("flush_interval", [1.0]),
    ("ws_path", "ws/metrics"),
    ("update_interval", 99),
    ("update_interval", 1000.0),
    ("update_interval", 60_001),
    ("ws_allowed_origins", "example.com"),
    ("ws_allowed_origins", "https://example.com/dashboard"),
    ("ws_allowed_origins", "ftp://example.com"),
    ("ws_allowed_origins", "https://user@example.com"),
    ("ws_allowed_origins", [""]),
    ("ws_max_message_bytes", 255),
    ("ws_max_connections_per_client", 0),
    ("ws_max_connections", 1_000_001),
    ("ws_message_rate", 0),
    ("ws_message_rate", math.inf),
    ("ws_stall_timeout", 0),
    ("batch_size", 0),
    ("batch_size", -5),
    ("batch_size", 1_000_001),
    ("batch_size", 10.0),
    ("batch_size", 1.5),
    ("batch_size", True),
    ("batch_size", False),
    ("batch_size", "ten"),
    ("batch_size", "1.5"),
    ("batch_size", math.nan),
    ("batch_size", None),
    ("max_buffer", 0),
    ("max_buffer", 100_000_001),
    ("max_buffer", True),
    ("sink_timeout", 0),
    ("sink_timeout", 3601),
    ("sink_timeout", math.nan),
    ("sink_timeout", False),
    ("shutdown_timeout", -0.1),
    ("shutdown_timeout", 3600.01),
    ("shutdown_timeout", math.inf),
    ("shutdown_timeout", True),
    ("retry_backoff_initial", 0),
    ("retry_backoff_initial", 3601),
    ("retry_backoff_initial", math.nan),
    ("retry_backoff_max", 0),
    ("retry_backoff_max", 86401),
    ("retry_backoff_max", math.inf),
    ("sample_rate", -0.01),
    ("sample_rate", 1.01),
    ("sample_rate", math.nan),
    ("sample_rate", True),
    ("sample_rate", "half"),
    ("slow_threshold_ms", -1),
    ("slow_threshold_ms", 1e9 + 1),
    ("slow_threshold_ms", math.inf),
    ("slow_threshold_ms", True),
    ("exclude_paths", 5),
    ("exclude_paths", None),
    ("exclude_paths", ["/a", 5]),
    ("exclude_paths", ["static/*"]),  # no leading '/' or '*': could never match
    ("exclude_paths", ["/a", ""]),
    ("exclude_paths", {"/a": 1}),
    ("trusted_proxies", "10.0.0.0/33"),
    ("trusted_proxies", ["not-a-network"]),
    ("trusted_proxies", ["10.0.0.0/8", "300.1.1.1"]),
    ("trusted_proxies", ["10.0.0.0/8", ""]),
    ("trusted_proxies", 10),
    ("forwarded_header", "x-real-ip"),
    ("forwarded_header", ""),
    ("forwarded_header", 5),
    ("forwarded_header", None),
    ("max_routes", 0),
    ("max_routes", 1_000_001),
    ("max_path_length", 15),
    ("max_path_length", 65537),
    ("max_path_length", 16.0),
    ("max_error_length", 15),
    ("max_error_length", 65537),
    ("speedups", 1),
    ("speedups", "maybe"),
    ("speedups", None),
    ("background_niceness", -1),
    ("background_niceness", 20),
    ("background_niceness", 5.0),
    ("health_cache_seconds", -1),
    ("liveness_max_loop_lag", 0),
    ("read_timeout", 0),
    ("read_timeout", 61),
    ("read_retry_after", -1),
    ("metrics_path", "metrics"),
    ("metrics_path", "/metrics/*"),
    ("metrics_path", 5),
    ("metrics_namespace", "1aegis"),
    ("metrics_namespace", "aegis-mw"),
    ("metrics_labels", {"route": "x"}),
    ("metrics_labels", {"__name__": "x"}),
    ("metrics_labels", {"bad-name": "x"}),
    ("metrics_labels", "service"),
    ("metrics_labels", {"service": 5}),
    ("metrics_buckets", "1,0.5"),
    ("metrics_buckets", [0.1, 0.1]),
    ("metrics_buckets", [0, 1]),
    ("metrics_buckets", "inf"),
    ("metrics_buckets", []),
    ("metrics_registry", "prometheus"),
    ("metrics_registry", 5),
    ("sink", 5),
    ("sink", None),
    ("sink", [5]),
    ("sink", ["memory://", 3.5]),
    ("alert_interval", 0.5),
    ("alert_interval", "soon"),
]


@pytest.mark.parametrize(("option", "value"), BAD)
def test_bad_keyword_values_raise_config_error(option: str, value: Any) -> None:
    """Wrong type, out of range, NaN/inf, bools for numbers, bad CIDRs/globs/headers
    all raise ConfigError naming option, value, 'keyword argument' and what is allowed.
    """
    with pytest.raises(ConfigError) as caught:
        AegisSettings.load(environ={}, **{option: value})
    assert_config_error(caught.value, option, value, "keyword argument", ALLOWED[option])


@pytest.mark.parametrize(("option", "value"), [("batch_size", 0), ("sample_rate", 2.0)])
def test_direct_construction_validates_without_a_source(option: str, value: Any) -> None:
    """Building AegisSettings directly validates too; the message then names no source."""
    with pytest.raises(ConfigError) as caught:
        AegisSettings(**{option: value})
    assert_config_error(caught.value, option, value, "", ALLOWED[option])
    assert "(from" not in str(caught.value)


def test_replace_validates_again() -> None:
    """settings.replace() returns a validated copy and refuses bad values."""
    settings = AegisSettings(sink="memory://")
    assert settings.replace(batch_size="50").batch_size == 50
    assert settings.batch_size == 5000
    with pytest.raises(ConfigError) as caught:
        settings.replace(batch_size=0)
    assert caught.value.option == "batch_size"


def test_config_error_is_a_value_error() -> None:
    """ConfigError can be caught as ValueError."""
    assert issubclass(ConfigError, ValueError)
    assert issubclass(ConfigFileError, ConfigError)


# -- retry backoff bounds ------------------------------------------------------


def test_backoff_max_below_initial_is_refused() -> None:
    """retry_backoff_max < retry_backoff_initial raises, naming both values."""
    with pytest.raises(ConfigError) as caught:
        AegisSettings.load(environ={}, retry_backoff_initial=5, retry_backoff_max=2)
    error = caught.value
    assert (error.option, error.value, error.source) == (
        "retry_backoff_max",
        2.0,
        "keyword argument",
    )
    assert "at least retry_backoff_initial (5.0)" in str(error)
    assert "(from keyword argument)" in str(error)


def test_backoff_max_below_initial_from_the_environment_names_the_variable() -> None:
    """The backoff check names the source of retry_backoff_max."""
    with pytest.raises(ConfigError) as caught:
        AegisSettings.load(
            environ={"AEGIS_RETRY_BACKOFF_MAX": "0.5", "AEGIS_RETRY_BACKOFF_INITIAL": "2"}
        )
    assert (caught.value.option, caught.value.source) == (
        "retry_backoff_max",
        "AEGIS_RETRY_BACKOFF_MAX",
    )


def test_backoff_max_equal_to_initial_is_accepted() -> None:
    """Equal backoff bounds are allowed (a constant backoff)."""
    settings = AegisSettings.load(environ={}, retry_backoff_initial=3, retry_backoff_max=3)
    assert (settings.retry_backoff_initial, settings.retry_backoff_max) == (3.0, 3.0)
