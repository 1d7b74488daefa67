from __future__ import annotations

from collections.abc import Iterator

from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.urls import include, path, re_path


def item(request: HttpRequest, item_id: int) -> HttpResponse:
    return HttpResponse(f"item {item_id}")


def order(request: HttpRequest, order_id: int) -> HttpResponse:
    return HttpResponse(f"order {order_id}")


def stream(request: HttpRequest) -> StreamingHttpResponse:
    def chunks() -> Iterator[bytes]:
        yield b"one "
        yield b"two"

    return StreamingHttpResponse(chunks())


def boom(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("kaput")


def article(request: HttpRequest, year: str) -> HttpResponse:
    return HttpResponse(year)


shop = [path("orders/<int:order_id>/", order)]

urlpatterns = [
    path("items/<int:item_id>/", item),
    path("stream/", stream),
    path("boom/", boom),
    re_path(r"^articles/(?P<year>[0-9]{4})/$", article),
    path("shop/", include(shop)),
]
