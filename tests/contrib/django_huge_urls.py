"""The test project's routes, and responses whose body claims more bytes than a
64-bit count holds (each chunk says it is ``sys.maxsize`` long), or whose
chunk's ``len()`` raises StopIteration."""

from __future__ import annotations

import sys

from django.http import HttpRequest, HttpResponse
from django.urls import path

from tests.contrib.django_project.urls import urlpatterns as project


class Claims(bytes):
    def __len__(self) -> int:
        return sys.maxsize


class HugeBody(HttpResponse):
    def __init__(self, chunks: list[bytes] | tuple[bytes, ...]) -> None:
        super().__init__(b"")
        self._container = chunks


def huge_list(request: HttpRequest) -> HttpResponse:
    return HugeBody([Claims(b"a"), Claims(b"b"), b"c"])


def huge_tuple(request: HttpRequest) -> HttpResponse:
    return HugeBody((Claims(b"a"), Claims(b"b"), b"c"))


class StopsCounting(bytes):
    def __len__(self) -> int:
        raise StopIteration


def stops_counting(request: HttpRequest) -> HttpResponse:
    return HugeBody([b"a", StopsCounting(b"b"), b"c"])


urlpatterns = [
    *project,
    path("huge-list/", huge_list),
    path("huge-tuple/", huge_tuple),
    path("stops-counting/", stops_counting),
]
