"""A Django project with aegis_mw: every request lands in aegis.db (SQLite).

Run it (WSGI):
    gunicorn -w 2 -b 127.0.0.1:8000 examples.django_project.wsgi:application
or (ASGI):
    uvicorn examples.django_project.asgi:application --port 8000
then open http://127.0.0.1:8000/dashboard, scrape /metrics, or ask
/api/metrics/overview?range=1h.
"""

SECRET_KEY = "example-only-change-me"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "examples.django_project.urls"
INSTALLED_APPS = ["aegis_mw.contrib.django"]
# First: the outermost middleware sees every answer, errors of the others included.
MIDDLEWARE = ["aegis_mw.contrib.django.AegisMiddleware"]
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True
AEGIS = {"sink": "sqlite:///aegis.db"}
