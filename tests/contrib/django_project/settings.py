"""A minimal Django project for the integration's tests."""

SECRET_KEY = "tests-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["testserver", "127.0.0.1", "localhost"]
ROOT_URLCONF = "tests.contrib.django_project.urls"
INSTALLED_APPS = ["aegis_mw.contrib.django"]
MIDDLEWARE = ["aegis_mw.contrib.django.AegisMiddleware"]
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True
# The monitoring data opened on purpose: these tests read it and are not about
# access control (private by default; see tests/access/).
AEGIS = {
    "sink": "memory://",
    "metrics_registry": "none",
    "flush_interval": 0.05,
    "access": {"api": "open", "dashboard": "open", "websocket": "open"},
}
