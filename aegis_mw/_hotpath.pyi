from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

NATIVE_MONOTONIC: int

def monotonic() -> float: ...

class HttpItem:
    def __len__(self) -> int: ...
    def __getitem__(self, index: int) -> Any: ...
    def __setitem__(self, index: int, value: Any) -> None: ...

class HttpPath:
    in_flight: int
    def __init__(
        self,
        *,
        owner: Any,
        app: Callable[..., Awaitable[None]],
        bypass: Callable[..., Awaitable[None]],
        clock: Callable[[], float],
        native_clock: bool,
        templates: dict[int, str],
        read_route: Callable[[MutableMapping[str, Any]], str],
        exclusions: list[Any],
        recorder: Any,
        observe_send: Callable[..., Any],
        observe_receive: Callable[..., Awaitable[Any]],
        throw_quietly: Callable[..., Any],
        other: Callable[..., Awaitable[None]],
        check_forwarded: bool,
    ) -> None: ...
    def __call__(
        self, scope: MutableMapping[str, Any], receive: Any, send: Any
    ) -> Awaitable[None]: ...

def call_directly(cls: type) -> None: ...

class WsgiPath:
    in_flight: int
    started: bool
    def __init__(
        self,
        *,
        owner: Any,
        app: Callable[..., Any],
        bypass: Callable[..., Any],
        fallback: Callable[..., Any],
        clock: Callable[[], float],
        native_clock: bool,
        exclusions: list[Any],
        recorder: Any,
        read_route: Callable[[dict[str, Any]], str | None] | None,
        route_key: str | None,
        templates: dict[int, str] | None,
        status_code: Callable[[Any], int],
        counting_input: Callable[[Any, Any], Any],
        start_arguments: Callable[..., tuple[Any, Any, Any]],
        write_arguments: Callable[..., Any],
        unmatched: str,
        check_forwarded: bool,
    ) -> None: ...
    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any: ...

class DjangoPath:
    in_flight: int
    owner: Any
    def __init__(
        self,
        *,
        owner: Any,
        get_response: Callable[[Any], Any],
        clock: Callable[[], float],
        native_clock: bool,
        recorder: Any,
        mounted: dict[str, Any],
        templates: dict[str, str],
        unmatched: str,
        check_forwarded: bool,
    ) -> None: ...
    def __call__(self, request: Any) -> Any: ...
    def process_exception(self, request: Any, exception: Exception) -> None: ...
