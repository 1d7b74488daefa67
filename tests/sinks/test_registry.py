"""Sink specs: URLs, objects and callables, the errors for bad ones, names, several sinks."""

from __future__ import annotations

import json
import os
import re
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from aegis_mw import Aegis, Batch, ConfigError, RequestRecord
from aegis_mw.sinks import CallableSink, JsonlSink, MemorySink, SQLiteSink, build_sinks
from aegis_mw.testing import FakeClock
from tests.harness import inbox_item

URL_FORMS = ("memory://", "sqlite:///", "sqlite:////", "jsonl:///")


class NamedSink:
    """A user sink object following the protocol."""

    def __init__(self, name: str = "custom") -> None:
        self.name = name
        self.batches: list[Batch] = []

    def write(self, batch: Batch) -> None:
        self.batches.append(batch)

    def close(self) -> None:
        pass


class NamelessSink:
    """Has ``write`` and ``close`` but no ``name``: not a RecordSink."""

    def write(self, batch: Batch) -> None:
        pass

    def close(self) -> None:
        pass


def ship(batch: Batch) -> None:
    """A module-level callable sink."""


def offer_requests(aegis: Aegis, count: int) -> None:
    for number in range(count):
        aegis.recorder.offer(
            inbox_item(
                f"/r/{number}",
                method="PUT",
                route="/r/{n}",
                status=204,
                ttfb=1000.25,
                end=1000.5,
                request_bytes=3,
                client=("198.51.100.7", 1234),
            )
        )


def test_memory_url() -> None:
    """``memory://`` builds a fresh MemorySink named ``memory`` (case-insensitive scheme)."""
    [(name, sink)] = build_sinks(("memory://",))
    assert (name, type(sink)) == ("memory", MemorySink)
    [(_, other)] = build_sinks(("MEMORY://",))
    assert type(other) is MemorySink
    assert other is not sink


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///aegis.db", "aegis.db"),
        ("sqlite:///data/aegis.db", "data/aegis.db"),
        ("sqlite:///my%20data.db", "my data.db"),
        ("SQLite:///aegis.db", "aegis.db"),
    ],
)
def test_sqlite_relative_urls(url: str, path: str) -> None:
    """Three slashes: the rest is a path relative to the working directory when the
    sink is built (resolved then, so a later chdir cannot move it), percent-decoded."""
    [(name, sink)] = build_sinks((url,))
    assert isinstance(sink, SQLiteSink)
    assert sink.path == os.path.abspath(path)
    assert name == f"sqlite:{path}"


def test_absolute_file_urls(tmp_path: Path) -> None:
    """Four slashes: an absolute path, for SQLite and JSONL alike."""
    db = tmp_path / "a.db"
    log = tmp_path / "a.jsonl"
    built = build_sinks((f"sqlite:///{db}", f"jsonl:///{log}"))
    assert [(name, type(sink), sink.path) for name, sink in built] == [  # type: ignore[attr-defined]
        (f"sqlite:{db}", SQLiteSink, str(db)),
        (f"jsonl:{log}", JsonlSink, str(log)),
    ]


def test_jsonl_relative_url() -> None:
    """``jsonl:///rel.jsonl`` is relative like SQLite's three-slash form."""
    [(name, sink)] = build_sinks(("jsonl:///logs/records.jsonl",))
    assert isinstance(sink, JsonlSink)
    assert (name, sink.path) == ("jsonl:logs/records.jsonl", os.path.abspath("logs/records.jsonl"))


def test_objects_and_callables() -> None:
    """A protocol object is used as is; a callable is wrapped in a CallableSink."""
    custom = NamedSink()
    built = build_sinks((custom, ship))
    assert built[0] == ("custom", custom)
    name, wrapped = built[1]
    assert isinstance(wrapped, CallableSink)
    assert wrapped.function is ship
    assert name == "callable:ship"


@pytest.mark.parametrize(
    "url",
    ["mysql://db/aegis", "redis://localhost", "file:///x.db", "sqlite3:///aegis.db"],
)
def test_unknown_scheme(url: str) -> None:
    """An unknown scheme is a ConfigError naming ``sink``, the scheme and the supported forms."""
    with pytest.raises(ConfigError) as caught:
        build_sinks((url,))
    error = caught.value
    assert isinstance(error, ValueError)
    assert error.option == "sink"
    assert error.value == url
    message = str(error)
    assert "'sink'" in message
    assert repr(url) in message
    assert f"unknown sink scheme {url.partition('://')[0]!r}" in message
    for form in URL_FORMS:
        assert form in message


@pytest.mark.parametrize("url", ["aegis.db", "memory", "sqlite:aegis.db", "/var/aegis.db", ""])
def test_missing_separator(url: str) -> None:
    """A spec without ``://`` is a ConfigError listing the supported forms."""
    with pytest.raises(ConfigError) as caught:
        build_sinks((url,))
    message = str(caught.value)
    assert caught.value.option == "sink"
    assert "'sink'" in message
    assert "not a sink URL" in message
    for form in URL_FORMS:
        assert form in message


@pytest.mark.parametrize(
    "url",
    ["sqlite://host/x", "sqlite://aegis.db", "sqlite://", "sqlite:///", "jsonl://host/x.jsonl"],
)
def test_file_url_without_a_path(url: str) -> None:
    """A host part or an empty path is refused with the three- and four-slash forms spelled out."""
    scheme = url.partition("://")[0]
    with pytest.raises(ConfigError) as caught:
        build_sinks((url,))
    message = str(caught.value)
    assert caught.value.option == "sink"
    assert "'sink'" in message
    assert repr(url) in message
    assert f"{scheme}:///relative" in message
    assert f"{scheme}:////absolute" in message


@pytest.mark.parametrize(
    "spec",
    [42, None, 1.5, b"memory://", object(), NamelessSink()],
    ids=["int", "none", "float", "bytes", "object", "nameless-sink"],
)
def test_non_sink_objects_in_build_sinks(spec: Any) -> None:
    """Anything that is not a URL, a sink or a callable is a ConfigError, not a TypeError."""
    with pytest.raises(ConfigError) as caught:
        build_sinks((spec,))
    message = str(caught.value)
    assert caught.value.option == "sink"
    assert "'sink'" in message
    for form in URL_FORMS:
        assert form in message


@pytest.mark.parametrize(
    "spec",
    [42, None, object(), ["memory://", 3], NamelessSink()],
    ids=["int", "none", "object", "list-with-int", "nameless-sink"],
)
def test_non_sink_objects_in_aegis(spec: Any) -> None:
    """``Aegis(sink=...)`` refuses non-sinks with a ConfigError naming ``sink`` and the URL forms."""
    with pytest.raises(ConfigError) as caught:
        Aegis(sink=spec, environ={})
    message = str(caught.value)
    assert caught.value.option == "sink"
    assert "'sink'" in message
    for form in ("memory://", "sqlite:///", "jsonl:///"):
        assert form in message


@pytest.mark.parametrize(
    ("spec", "sink_form"),
    [
        ("bogus://x", "unknown sink scheme"),
        ("aegis.db", "not a sink URL"),
        ("sqlite://host/x", "sqlite:///relative"),
    ],
)
def test_bad_urls_through_aegis(spec: str, sink_form: str) -> None:
    """The same URL errors come out of ``Aegis(sink=...)``."""
    with pytest.raises(ConfigError, match="'sink'") as caught:
        Aegis(sink=spec, environ={})
    assert caught.value.option == "sink"
    assert sink_form in str(caught.value)


@pytest.mark.parametrize(
    ("kwargs", "source"),
    [
        ({"environ": {"AEGIS_SINK": "mysql://db/aegis"}}, "AEGIS_SINK"),
        ({"environ": {}, "sink": "mysql://db/aegis"}, "keyword argument"),
    ],
    ids=["environment", "keyword"],
)
def test_bad_url_error_names_its_source(kwargs: dict[str, Any], source: str) -> None:
    """Like every other option's error, a bad sink URL says where the value came from."""
    with pytest.raises(ConfigError) as caught:
        Aegis(**kwargs)
    assert caught.value.option == "sink"
    assert f"(from {source})" in str(caught.value)


def test_duplicate_names_get_numbered_suffixes(tmp_path: Path) -> None:
    """Equal names become ``name``, ``name#2``, ``name#3``, each counted separately."""
    db = tmp_path / "same.db"
    custom_a, custom_b = NamedSink("x"), NamedSink("x")
    built = build_sinks(
        ("memory://", f"sqlite:///{db}", "memory://", custom_a, f"sqlite:///{db}", "memory://",
         custom_b, ship, ship)
    )  # fmt: skip
    assert [name for name, _ in built] == [
        "memory", f"sqlite:{db}", "memory#2", "x", f"sqlite:{db}#2", "memory#3", "x#2",
        "callable:ship", "callable:ship#2",
    ]  # fmt: skip
    assert len({id(sink) for _, sink in built}) == len(built)


def test_duplicate_names_in_pipeline_stats(make_aegis: Callable[..., Aegis]) -> None:
    """``stats()`` reports duplicate sinks under their numbered names."""
    aegis = make_aegis(sink=["memory://", "memory://", NamedSink("x"), NamedSink("x")])
    assert [s.name for s in aegis.stats().sinks] == ["memory", "memory#2", "x", "x#2"]


def test_comma_separated_urls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_aegis: Callable[..., Aegis]
) -> None:
    """A string (or ``AEGIS_SINK``) may list several URLs separated by commas."""
    monkeypatch.chdir(tmp_path)
    aegis = make_aegis(sink=" memory:// , jsonl:///a.jsonl,")
    assert [type(s) for s in aegis.sinks] == [MemorySink, JsonlSink]
    from_env = Aegis(environ={"AEGIS_SINK": "sqlite:///b.db,memory://"})
    try:
        assert [s.name for s in from_env.stats().sinks] == ["sqlite:b.db", "memory"]
    finally:
        from_env.shutdown(timeout=5)


def test_several_file_and_memory_sinks_each_receive_every_record(
    tmp_path: Path, make_aegis: Callable[..., Aegis]
) -> None:
    """memory + SQLite + JSONL: every sink stores every record, with the same ids and values."""
    db = tmp_path / "many.db"
    log = tmp_path / "many.jsonl"
    aegis = make_aegis(
        sink=["memory://", f"sqlite:///{db}", f"jsonl:///{log}"],
        flush_interval=3600,
        clock=FakeClock(),
    )
    offer_requests(aegis, 6)

    assert aegis.force_flush(timeout=10) is True

    memory = aegis.sinks[0]
    assert isinstance(memory, MemorySink)
    expected = memory.requests
    assert len(expected) == 6
    assert len({r.request_id for r in expected}) == 6
    connection = sqlite3.connect(db)
    try:
        rows = connection.execute("SELECT * FROM aegis_requests ORDER BY request_id").fetchall()
    finally:
        connection.close()
    assert [RequestRecord(*row) for row in rows] == sorted(expected)
    lines = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    assert lines == [{"type": "request", **r.to_json()} for r in expected]
    assert [(s.written, s.errors, s.backlog) for s in aegis.stats().sinks] == [(6, 0, 0)] * 3


def test_memory_sqlite_and_callable_each_receive_every_record(
    tmp_path: Path, make_aegis: Callable[..., Aegis]
) -> None:
    """memory + SQLite + a callable: all three get the same six records."""
    db = tmp_path / "many.db"
    batches: list[Batch] = []
    aegis = make_aegis(
        sink=["memory://", f"sqlite:///{db}", batches.append],
        flush_interval=3600,
        clock=FakeClock(),
    )
    offer_requests(aegis, 6)

    assert aegis.force_flush(timeout=10) is True

    memory = aegis.sinks[0]
    assert isinstance(memory, MemorySink)
    expected = memory.requests
    assert len(expected) == 6
    connection = sqlite3.connect(db)
    try:
        rows = connection.execute("SELECT * FROM aegis_requests ORDER BY request_id").fetchall()
    finally:
        connection.close()
    assert [RequestRecord(*row) for row in rows] == sorted(expected)
    assert [r for batch in batches for r in batch.requests] == expected
    assert [s.name for s in aegis.stats().sinks] == [
        "memory",
        f"sqlite:{db}",
        "callable:list.append",
    ]
    assert [(s.written, s.errors) for s in aegis.stats().sinks] == [(6, 0)] * 3


@pytest.mark.parametrize(
    ("options", "source"),
    [({"sink": []}, "keyword argument"), ({"environ": {"AEGIS_SINK": ""}}, "AEGIS_SINK")],
    ids=["empty-list", "empty-environment-variable"],
)
def test_no_sink_at_all_is_refused(options: dict[str, Any], source: str) -> None:
    """An empty sink list (often an unset variable) would throw records away: refused."""
    options.setdefault("environ", {})
    with pytest.raises(ConfigError, match="at least one sink") as caught:
        Aegis(**options)
    assert (caught.value.option, caught.value.source) == ("sink", source)


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        (MemorySink, "a class, not a sink; pass an instance: MemorySink()"),
        (SQLiteSink, "a class, not a sink; pass an instance: SQLiteSink()"),
        ("sqlite:///:memory:", "not a database file; memory://"),
    ],
    ids=["sink-class", "sqlite-class", "sqlite-memory"],
)
def test_sinks_that_cannot_work_are_refused_at_start(spec: Any, words: str) -> None:
    """A class instead of an instance, or an in-memory SQLite name: refused when built."""
    with pytest.raises(ConfigError, match=re.escape(words)) as caught:
        Aegis(sink=spec, environ={})
    assert caught.value.option == "sink"


@pytest.mark.parametrize("scheme", ["sqlite", "jsonl"])
def test_file_sinks_check_their_path_at_start(tmp_path: Path, scheme: str) -> None:
    """A path that is a directory, or whose parent is a file, fails at start."""
    a_file = tmp_path / "plain-file"
    a_file.write_text("x")
    with pytest.raises(ConfigError, match="names a directory"):
        Aegis(sink=f"{scheme}:///{tmp_path}", environ={})
    with pytest.raises(ConfigError, match="cannot be created"):
        Aegis(sink=f"{scheme}:///{a_file}/inside.db", environ={})


def test_sink_files_are_readable_by_their_owner_only(
    tmp_path: Path, make_aegis: Callable[..., Aegis]
) -> None:
    """Records hold client addresses and error texts: files are created 0600."""
    database, log = tmp_path / "a.db", tmp_path / "a.jsonl"
    aegis = make_aegis(sink=[f"sqlite:///{database}", f"jsonl:///{log}"], flush_interval=3600)
    offer_requests(aegis, 2)
    assert aegis.force_flush(timeout=10) is True
    assert [os.stat(path).st_mode & 0o777 for path in (database, log)] == [0o600, 0o600]
