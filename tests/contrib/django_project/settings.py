"""A minimal Django project for the integration's tests."""

SECRET_KEY = "tests-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["testserver", "127.0.0.1", "localhost"]
ROOT_URLCONF = "tests.contrib.django_project.urls"
INSTALLED_APPS = ["aegis_mw.contrib.django"]
MIDDLEWARE = ["aegis_mw.contrib.django.AegisMiddleware"]
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True
AEGIS = {"sink": "memory://", "metrics_registry": "none", "flush_interval": 0.05}
