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
        check_forwarded: bool,
    ) -> None: ...
    def __call__(
        self, scope: MutableMapping[str, Any], receive: Any, send: Any
    ) -> Awaitable[None]: ...
