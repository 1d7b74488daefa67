"""Framework integrations: thin installers over the ASGI and WSGI middleware."""
