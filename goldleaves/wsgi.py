"""WSGI entry point (gunicorn goldleaves.wsgi)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "goldleaves.settings")
application = get_wsgi_application()
