"""A minimal Django project with channel_asgi wrapped around its ASGI application.

Run it from the repository root, then open http://127.0.0.1:8000/ in two tabs::

    uvicorn examples.django_project.asgi:application --lifespan off

``GET /`` is the chat page, ``POST /announce`` publishes from a view (server-side emit) and
``GET /status`` reports whether ``ExampleConfig.ready`` ran. Django has no mount, so the channels
wrap its ASGI application: requests under ``/channel`` go to them, everything else to Django.
Django's handler refuses ``lifespan`` (hence ``--lifespan off``), and Django starts up when the
application is built; the channels start on their first request and stop with the server.
"""

from __future__ import annotations

import os

# Django ships no type hints (django-stubs is not a dependency): its imports are ignored.
from django.core.asgi import get_asgi_application  # type: ignore[import-untyped]

from channel_asgi import ChannelMiddleware

from .realtime import channels

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.django_project.settings")

application = ChannelMiddleware(get_asgi_application(), channels, prefix="/channel")
