import os

# Django's ASGI application with /ws/metrics in front (Django itself takes HTTP only).
from aegis_mw.contrib.django.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.django_project.settings")
application = get_asgi_application()
