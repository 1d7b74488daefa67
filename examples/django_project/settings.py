"""A Django project with aegis_mw: every request lands in aegis.db (SQLite).

Run it with Django's own server (``pip install 'aegis_mw[django]'``):
    python examples/django_project/manage.py runserver
or under gunicorn (WSGI) or uvicorn (ASGI):
    gunicorn -w 2 -b 127.0.0.1:8000 examples.django_project.wsgi:application
    uvicorn examples.django_project.asgi:application --port 8000
then open the dashboard's link from the start-up line (it carries the access
token), scrape /metrics, or ask /api/metrics/overview?range=1h with the token.
Under WSGI the live stream is served on ws_port (8765, or AEGIS_WS_PORT) by a
thread of the first process to bind it; under ASGI on the app's own port.
"""

import os

SECRET_KEY = "example-only-change-me"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "examples.django_project.urls"
INSTALLED_APPS = ["aegis_mw.contrib.django"]
# First: the outermost middleware sees every answer, errors of the others included.
MIDDLEWARE = ["aegis_mw.contrib.django.AegisMiddleware"]
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True
AEGIS = {
    "sink": "sqlite:///aegis.db",
    # A WSGI server speaks no WebSocket: the live stream's port.
    "ws_port": int(os.environ.get("AEGIS_WS_PORT", "8765")),
}
