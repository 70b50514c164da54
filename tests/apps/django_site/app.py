"""A Django project's wsgi.py, in the shape `django-admin startproject` writes it: the app is
called `application`, so `rip-worker tests/apps/django_site` (which asks for `app`) is refused
with a message that names it."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "site_conf.settings")

application = get_wsgi_application()
