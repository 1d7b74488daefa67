"""A URLconf whose project serves its own /metrics (for the route-clash test)."""

from django.http import HttpResponse
from django.urls import path


def own_metrics(request: object) -> HttpResponse:
    return HttpResponse("the project's own metrics", content_type="text/plain")


urlpatterns = [path("metrics", own_metrics)]
