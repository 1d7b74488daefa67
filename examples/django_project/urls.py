from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path


def home(request: HttpRequest) -> HttpResponse:
    return HttpResponse("hello from Django")


def read_item(request: HttpRequest, item_id: int) -> JsonResponse:
    return JsonResponse({"item_id": item_id})


def fail(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("this view fails on purpose")


urlpatterns = [
    path("", home),
    path("api/items/<int:item_id>", read_item),
    path("fail", fail),
]
