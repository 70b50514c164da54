"""The same Django project's asgi.py: Django's ASGI handler raises on the lifespan scope."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "site_conf.settings")

application = get_asgi_application()
