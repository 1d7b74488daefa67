"""AEGIS_CONFIG files, AEGIS_* variables, unknown options and precedence between the sources."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from aegis_mw import Aegis, AegisConfigWarning, AegisSettings, ConfigError
from aegis_mw.core.config_file import ConfigFileError
from tests.core.settings_helpers import (
    ALLOWED,
    DEFAULTS,
    OPTION_NAMES,
    assert_config_error,
    write_toml,
)

# -- the environment -----------------------------------------------------------

ENV_PARSED: list[tuple[str, str, Any]] = [
    ("AEGIS_BATCH_SIZE", "1_000", 1000),
    ("AEGIS_MAX_BUFFER", " 250_000 ", 250_000),
    ("AEGIS_MAX_ROUTES", "7", 7),
    ("AEGIS_MAX_PATH_LENGTH", "1_024", 1024),
    ("AEGIS_FLUSH_INTERVAL", "0.25", 0.25),
    ("AEGIS_SINK_TIMEOUT", "2", 2.0),
    ("AEGIS_SLOW_THRESHOLD_MS", "1e3", 1000.0),
    ("AEGIS_SAMPLE_RATE", ".5", 0.5),
    ("AEGIS_EXCLUDE_PATHS", "/health, /static/*,,", ("/health", "/static/*")),
    ("AEGIS_EXCLUDE_PATHS", "", ()),
    ("AEGIS_TRUSTED_PROXIES", "10.0.0.0/8,192.168.0.0/16", ("10.0.0.0/8", "192.168.0.0/16")),
    ("AEGIS_FORWARDED_HEADER", "FORWARDED", "forwarded"),
    ("AEGIS_SINK", "memory://, jsonl:///log.jsonl", ("memory://", "jsonl:///log.jsonl")),
]


@pytest.mark.parametrize(("variable", "text", "expected"), ENV_PARSED)
def test_environment_values_are_parsed_from_text(variable: str, text: str, expected: Any) -> None:
    """AEGIS_* text becomes ints (underscores allowed), floats and comma-separated lists."""
    settings = AegisSettings.load(environ={variable: text})
    option = variable[len("AEGIS_") :].lower()
    assert getattr(settings, option) == expected
    assert type(getattr(settings, option)) is type(expected)
    assert settings.sources == {option: variable}


ENV_BAD: list[tuple[str, str, Any]] = [
    # (variable, text, the value the error reports: the text when it does not
    # parse, the parsed number when it parses but is out of range)
    ("AEGIS_BATCH_SIZE", "1.5", "1.5"),
    ("AEGIS_BATCH_SIZE", "ten", "ten"),
    ("AEGIS_BATCH_SIZE", "", ""),
    ("AEGIS_BATCH_SIZE", "true", "true"),
    ("AEGIS_BATCH_SIZE", "0", 0),
    ("AEGIS_FLUSH_INTERVAL", "inf", math.inf),
    ("AEGIS_FLUSH_INTERVAL", "-1", -1.0),
    ("AEGIS_SAMPLE_RATE", "nan", math.nan),
    ("AEGIS_SAMPLE_RATE", "2", 2.0),
    ("AEGIS_MAX_PATH_LENGTH", "8", 8),
    ("AEGIS_TRUSTED_PROXIES", "10.0.0.0/8, nope", "10.0.0.0/8, nope"),
    ("AEGIS_FORWARDED_HEADER", "x-real-ip", "x-real-ip"),
]


@pytest.mark.parametrize(("variable", "text", "reported"), ENV_BAD)
def test_bad_environment_values_name_the_variable(variable: str, text: str, reported: Any) -> None:
    """A bad AEGIS_* value raises ConfigError naming the option, value and the variable."""
    option = variable[len("AEGIS_") :].lower()
    with pytest.raises(ConfigError) as caught:
        AegisSettings.load(environ={variable: text})
    assert_config_error(caught.value, option, reported, variable, ALLOWED[option])


def test_variables_without_the_prefix_are_ignored() -> None:
    """Only AEGIS_-prefixed variables are options; others are none of our business."""
    settings = AegisSettings.load(environ={"BATCH_SIZE": "5", "PATH": "/bin", "aegis_x": "1"})
    assert settings == AegisSettings()
    assert dict(settings.sources) == {}


# -- unknown options -------------------------------------------------------------


def test_unknown_keyword_argument_suggests_the_closest_option() -> None:
    """A misspelt keyword raises ConfigError with a did-you-mean hint."""
    with pytest.raises(ConfigError) as caught:
        AegisSettings.load(environ={}, batch_sise=5)
    error = caught.value
    assert (error.option, error.value, error.source) == (
        "batch_sise",
        "(unknown option)",
        "keyword arguments",
    )
    assert "did you mean 'batch_size'?" in str(error)
    assert "Known: " + ", ".join(OPTION_NAMES) in str(error)


def test_unknown_environment_variable_warns_with_a_hint_and_is_ignored() -> None:
    """A misspelt AEGIS_ variable is named in a warning with a hint, and ignored: another
    program's AEGIS_* variable must not stop the app."""
    with pytest.warns(AegisConfigWarning, match="AEGIS_FLUSH_INTERVALL") as caught:
        settings = AegisSettings.load(environ={"AEGIS_FLUSH_INTERVALL": "2"})
    assert "did you mean 'flush_interval'?" in str(caught[0].message)
    assert settings.flush_interval == 1.0


def test_unknown_file_option_suggests_the_closest_option(tmp_path: Path) -> None:
    """A misspelt option in the file raises ConfigError naming the file, with a hint."""
    path = write_toml(tmp_path / "aegis.toml", {"sample_rat": 0.5})
    with pytest.raises(ConfigError) as caught:
        AegisSettings.load(environ={"AEGIS_CONFIG": str(path)})
    error = caught.value
    assert (error.option, error.source) == ("sample_rat", str(path))
    assert "did you mean 'sample_rate'?" in str(error)
    assert str(path) in str(error)


def test_unknown_option_without_a_close_match_has_no_hint() -> None:
    """Nothing resembling a known option: no hint, but the known options are listed."""
    with pytest.raises(ConfigError) as caught:
        AegisSettings.load(environ={}, zzzz=1)
    assert "did you mean" not in str(caught.value)
    assert "not an aegis_mw option" in str(caught.value)
    assert "Known: sink, flush_interval" in str(caught.value)


# -- precedence ----------------------------------------------------------------

# option: (file value, environment text, parsed environment value, keyword value,
#          coerced keyword value); each level differs from the next lower one.
LEVELS: dict[str, tuple[Any, str, Any, Any, Any]] = {
    "sink": ("memory://", "jsonl:///env.jsonl", ("jsonl:///env.jsonl",), "sqlite:///kw.db",
             ("sqlite:///kw.db",)),
    "flush_interval": (2.0, "3.5", 3.5, 4, 4.0),
    "batch_size": (10, "1_000", 1000, 7, 7),
    "max_buffer": (50, "60", 60, 70, 70),
    "sink_timeout": (1.5, "2.5", 2.5, 7, 7.0),
    "shutdown_timeout": (0, "0.5", 0.5, 9, 9.0),
    "retry_backoff_initial": (0.5, "0.25", 0.25, 0.125, 0.125),
    "retry_backoff_max": (40, "50", 50.0, 60, 60.0),
    "sample_rate": (0.5, "0.25", 0.25, 0.125, 0.125),
    "slow_threshold_ms": (100, "200.5", 200.5, 300, 300.0),
    "exclude_paths": (["/f"], "/e1,/e2", ("/e1", "/e2"), ["/k/*"], ("/k/*",)),
    "trusted_proxies": (["10.0.0.0/8"], "192.168.0.0/16, 172.16.0.0/12",
                        ("192.168.0.0/16", "172.16.0.0/12"), ["::1/128"], ("::1/128",)),
    "forwarded_header": ("forwarded", "x-forwarded-for", "x-forwarded-for", "Forwarded",
                         "forwarded"),
    "max_routes": (5, "6", 6, 8, 8),
    "max_path_length": (100, "200", 200, 300, 300),
    "max_error_length": (100, "200", 200, 300, 300),
    "speedups": (False, "true", True, False, False),
    "background_niceness": (1, "2", 2, 3, 3),
    "health_cache_seconds": (1, "2", 2.0, 3, 3.0),
    "liveness_max_loop_lag": (1, "2", 2.0, 3, 3.0),
    "read_timeout": (1, "2", 2.0, 3, 3.0),
    "read_retry_after": (1, "2", 2.0, 3, 3.0),
    "metrics_path": ("/m1", "/m2", "/m2", "/m3", "/m3"),
    "health_path": ("/h1", "/h2", "/h2", "/h3", "/h3"),
    "liveness_path": ("/l1", "/l2", "/l2", "/l3", "/l3"),
    "readiness_path": ("/r1", "/r2", "/r2", "/r3", "/r3"),
    "metrics_namespace": ("a", "b", "b", "c", "c"),
    "metrics_labels": ("service=a", "service=b", (("service", "b"),), {"service": "c"},
                       (("service", "c"),)),
    "metrics_buckets": ([1, 2], "3,4", (3.0, 4.0), [5], (5.0,)),
    "metrics_registry": ("none", "default", "default", "none", "none"),
    "metrics_multiprocess_dir": ("/a", "/b", "/b", "/c", "/c"),
    "metrics_system": (False, "yes", True, False, False),
    "metrics_disk_path": ("/a", "/b", "/b", "/c", "/c"),
}  # fmt: skip


def _file_expected(option: str, value: Any) -> Any:
    """A file value after validation: lists become tuples, a sink URL a 1-tuple,
    constant labels sorted pairs, bucket bounds floats."""
    if option == "sink":
        return (value,)
    if option == "metrics_labels":
        return tuple(sorted(tuple(pair.split("=")) for pair in value.split(",")))
    if option == "metrics_buckets":
        return tuple(float(bound) for bound in value)
    return tuple(value) if isinstance(value, list) else value


@pytest.mark.parametrize("option", sorted(LEVELS))
def test_precedence_option_by_option(option: str, tmp_path: Path) -> None:
    """keyword > AEGIS_ variable > AEGIS_CONFIG file > default, for every option."""
    file_value, env_text, env_value, kw_value, kw_expected = LEVELS[option]
    path = write_toml(tmp_path / "aegis.toml", {option: file_value})
    variable = "AEGIS_" + option.upper()
    file_env = {"AEGIS_CONFIG": str(path)}

    settings = AegisSettings.load(environ={**file_env, variable: env_text}, **{option: kw_value})
    assert getattr(settings, option) == kw_expected
    assert settings.sources == {option: "keyword argument"}

    settings = AegisSettings.load(environ={**file_env, variable: env_text})
    assert getattr(settings, option) == env_value
    assert settings.sources == {option: variable}

    settings = AegisSettings.load(environ=file_env)
    assert getattr(settings, option) == _file_expected(option, file_value)
    assert settings.sources == {option: str(path)}

    settings = AegisSettings.load(environ={})
    assert getattr(settings, option) == DEFAULTS[option]
    assert dict(settings.sources) == {}


def test_precedence_with_every_source_in_one_load(tmp_path: Path) -> None:
    """One load mixing sources takes each option from its highest source."""
    path = write_toml(
        tmp_path / "aegis.toml",
        {"batch_size": 10, "flush_interval": 2.0, "sample_rate": 0.5, "max_routes": 9},
    )
    environ = {"AEGIS_CONFIG": str(path), "AEGIS_FLUSH_INTERVAL": "3", "AEGIS_SAMPLE_RATE": "0.25"}
    settings = AegisSettings.load(environ=environ, sample_rate=0.125)
    assert (settings.batch_size, settings.flush_interval, settings.sample_rate) == (10, 3.0, 0.125)
    assert (settings.max_routes, settings.max_buffer) == (9, 100_000)
    assert settings.sources == {
        "batch_size": str(path),
        "max_routes": str(path),
        "flush_interval": "AEGIS_FLUSH_INTERVAL",
        "sample_rate": "keyword argument",
    }


def test_a_higher_source_does_not_rescue_a_bad_lower_one(tmp_path: Path) -> None:
    """A bad value is only reported if it is the one that wins; overridden ones are ignored."""
    path = write_toml(tmp_path / "aegis.toml", {"batch_size": 0})
    environ = {"AEGIS_CONFIG": str(path), "AEGIS_BATCH_SIZE": "ten"}
    assert AegisSettings.load(environ=environ, batch_size=5).batch_size == 5
    with pytest.raises(ConfigError) as caught:
        AegisSettings.load(environ=environ)
    assert caught.value.source == "AEGIS_BATCH_SIZE"
    with pytest.raises(ConfigError) as caught:
        AegisSettings.load(environ={"AEGIS_CONFIG": str(path)})
    assert_config_error(caught.value, "batch_size", 0, str(path), ALLOWED["batch_size"])


# -- the AEGIS_CONFIG file -------------------------------------------------------


def test_toml_file_at_top_level(tmp_path: Path) -> None:
    """Options at the top level of a TOML file are read and validated."""
    path = write_toml(
        tmp_path / "aegis.toml",
        {"sink": "memory://", "flush_interval": 2, "exclude_paths": ["/health", "/static/*"]},
    )
    settings = AegisSettings.load(environ={"AEGIS_CONFIG": str(path)})
    assert settings.sink == ("memory://",)
    assert settings.flush_interval == 2.0
    assert type(settings.flush_interval) is float
    assert settings.exclude_paths == ("/health", "/static/*")
    assert set(settings.sources.values()) == {str(path)}


def test_toml_file_under_an_aegis_table(tmp_path: Path) -> None:
    """Options under [aegis] are read; other tools' tables in the same file are ignored."""
    path = tmp_path / "settings.TOML"
    path.write_text(
        '[tool.other]\nbatch_size = "not ours"\n\n[aegis]\nbatch_size = 25\nsample_rate = 0.5\n',
        encoding="utf-8",
    )
    settings = AegisSettings.load(environ={"AEGIS_CONFIG": str(path)})
    assert (settings.batch_size, settings.sample_rate) == (25, 0.5)
    assert settings.sources == {"batch_size": str(path), "sample_rate": str(path)}


@pytest.mark.parametrize("suffix", [".yaml", ".yml"])
def test_yaml_file(tmp_path: Path, suffix: str) -> None:
    """YAML files (.yaml and .yml) work, at top level and under an aegis mapping."""
    top = tmp_path / f"top{suffix}"
    top.write_text(
        "batch_size: 12\ntrusted_proxies:\n  - 10.0.0.0/8\nforwarded_header: Forwarded\n",
        encoding="utf-8",
    )
    settings = AegisSettings.load(environ={"AEGIS_CONFIG": str(top)})
    assert (settings.batch_size, settings.trusted_proxies, settings.forwarded_header) == (
        12,
        ("10.0.0.0/8",),
        "forwarded",
    )
    nested = tmp_path / f"nested{suffix}"
    nested.write_text("other_tool:\n  x: 1\naegis:\n  max_routes: 33\n", encoding="utf-8")
    settings = AegisSettings.load(environ={"AEGIS_CONFIG": str(nested)})
    assert settings.max_routes == 33
    assert settings.sources == {"max_routes": str(nested)}


def test_empty_yaml_file_means_defaults(tmp_path: Path) -> None:
    """An empty YAML document sets nothing."""
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing yet\n", encoding="utf-8")
    assert AegisSettings.load(environ={"AEGIS_CONFIG": str(path)}) == AegisSettings()


def test_empty_config_variable_means_no_file() -> None:
    """AEGIS_CONFIG set to an empty string reads no file."""
    assert AegisSettings.load(environ={"AEGIS_CONFIG": ""}) == AegisSettings()


def test_bad_values_in_a_file_name_the_file(tmp_path: Path) -> None:
    """A bad value from a TOML or YAML file names the file as its source."""
    toml_path = write_toml(tmp_path / "a.toml", {"batch_size": True})
    with pytest.raises(ConfigError) as caught:
        AegisSettings.load(environ={"AEGIS_CONFIG": str(toml_path)})
    assert_config_error(caught.value, "batch_size", True, str(toml_path), ALLOWED["batch_size"])

    yaml_path = tmp_path / "a.yaml"
    yaml_path.write_text("sample_rate: .nan\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        AegisSettings.load(environ={"AEGIS_CONFIG": str(yaml_path)})
    assert_config_error(
        caught.value, "sample_rate", math.nan, str(yaml_path), ALLOWED["sample_rate"]
    )


def _config_file_error(path: Path | str) -> ConfigFileError:
    with pytest.raises(ConfigFileError) as caught:
        AegisSettings.load(environ={"AEGIS_CONFIG": str(path)})
    error = caught.value
    assert (error.option, error.value, error.source) == (
        "AEGIS_CONFIG",
        str(path),
        "environment variable AEGIS_CONFIG",
    )
    assert str(path) in str(error)
    return error


def test_missing_file(tmp_path: Path) -> None:
    """A path that does not exist raises ConfigFileError saying it cannot be read."""
    error = _config_file_error(tmp_path / "missing.toml")
    assert error.allowed == "cannot be read: No such file or directory"


def test_unreadable_path(tmp_path: Path) -> None:
    """A directory named as the file raises ConfigFileError saying it cannot be read."""
    directory = tmp_path / "dir.toml"
    directory.mkdir()
    error = _config_file_error(directory)
    assert error.allowed.startswith("cannot be read: ")


def test_invalid_toml(tmp_path: Path) -> None:
    """Broken TOML raises ConfigFileError saying so."""
    path = tmp_path / "broken.toml"
    path.write_text("batch_size = = 3\n", encoding="utf-8")
    assert _config_file_error(path).allowed.startswith("not valid TOML: ")


def test_invalid_yaml(tmp_path: Path) -> None:
    """Broken YAML raises ConfigFileError saying so."""
    path = tmp_path / "broken.yml"
    path.write_text("batch_size: [1, 2\nsample_rate: 0.5\n", encoding="utf-8")
    assert _config_file_error(path).allowed.startswith("not valid YAML: ")


@pytest.mark.parametrize(("name", "shown"), [("aegis.json", "'.json'"), ("aegis", "'no suffix'")])
def test_wrong_suffix(tmp_path: Path, name: str, shown: str) -> None:
    """Only .toml, .yaml and .yml are read; others raise naming the suffix."""
    path = tmp_path / name
    path.write_text('{"batch_size": 5}', encoding="utf-8")
    error = _config_file_error(path)
    assert error.allowed == f"use a .toml, .yaml or .yml file, not {shown}"


@pytest.mark.parametrize("document", ["- 1\n- 2\n", "just a string\n", "42\n"])
def test_non_mapping_document(tmp_path: Path, document: str) -> None:
    """A YAML document that is not a mapping raises ConfigFileError."""
    path = tmp_path / "list.yaml"
    path.write_text(document, encoding="utf-8")
    error = _config_file_error(path)
    assert error.allowed == "the file must hold a mapping of option names to values"


# -- Aegis and the environment -----------------------------------------------------


def test_settings_and_options_together_are_refused() -> None:
    """Aegis(settings=..., sample_rate=...) raises TypeError before building anything."""
    with pytest.raises(TypeError, match="either settings="):
        Aegis(settings=AegisSettings(sink="memory://"), sample_rate=0.5)


def test_aegis_uses_a_given_settings_object() -> None:
    """Aegis(settings=s) keeps s as it is, without reading the environment."""
    settings = AegisSettings(sink="memory://", batch_size=3)
    aegis = Aegis(settings=settings, environ={"AEGIS_BATCH_SIZE": "bad"})
    try:
        assert aegis.settings is settings
        assert aegis.flusher.cycle.batch_size == 3
    finally:
        assert aegis.shutdown(timeout=5)


class _EnvironTrap(Mapping[str, str]):
    """Stands in for os.environ and fails the test on any read."""

    def __getitem__(self, key: str) -> str:
        raise AssertionError(f"os.environ[{key!r}] was read")

    def __iter__(self) -> Iterator[str]:
        raise AssertionError("os.environ was iterated")

    def __len__(self) -> int:
        raise AssertionError("len(os.environ) was taken")

    def get(self, key: str, default: Any = None) -> Any:
        raise AssertionError(f"os.environ.get({key!r}) was called")


def test_explicit_environ_isolates_from_os_environ(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """With environ= given, bad AEGIS_ variables in os.environ are never seen."""
    monkeypatch.setenv("AEGIS_BATCH_SIZE", "not-a-number")
    monkeypatch.setenv("AEGIS_NO_SUCH_OPTION", "1")
    monkeypatch.setenv("AEGIS_CONFIG", str(tmp_path / "missing.toml"))
    # The bad variables do bite when os.environ is the source...
    with pytest.raises(ConfigError):
        AegisSettings.load()
    # ...and are invisible when environ= is given.
    assert AegisSettings.load(environ={}) == AegisSettings()
    assert AegisSettings.load(environ={"AEGIS_BATCH_SIZE": "5"}).batch_size == 5
    aegis = Aegis(environ={}, sink="memory://")
    try:
        assert aegis.settings.batch_size == 5000
    finally:
        assert aegis.shutdown(timeout=5)


def test_explicit_environ_never_touches_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading with environ= does not read os.environ at all."""
    with monkeypatch.context() as patch:
        patch.setattr(os, "environ", _EnvironTrap())
        settings = AegisSettings.load(environ={"AEGIS_MAX_ROUTES": "4"}, sample_rate=0.5)
    assert (settings.max_routes, settings.sample_rate) == (4, 0.5)


def test_trusting_every_address_is_allowed_with_a_warning() -> None:
    """trusted_proxies 0.0.0.0/0 lets any client choose its client_ip: said at start."""
    with pytest.warns(AegisConfigWarning, match="any client can set its own client_ip"):
        settings = AegisSettings.load(environ={}, trusted_proxies=["0.0.0.0/0"])
    assert settings.trusted_proxies == ("0.0.0.0/0",)
