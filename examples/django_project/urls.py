"""The project's own routes; ``/channel`` is served by channel_asgi, around Django (``asgi.py``)."""

from __future__ import annotations

# Django ships no type hints (django-stubs is not a dependency): its imports are ignored.
from django.urls import path  # type: ignore[import-untyped]

from . import views

urlpatterns = [
    path("", views.index, name="index"),
    path("announce", views.announce, name="announce"),
    path("status", views.status, name="status"),
]
