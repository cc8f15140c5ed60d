"""The project as a Django app, so that it has templates and a startup hook."""

from __future__ import annotations

import time

# Django ships no type hints (django-stubs is not a dependency): its imports are ignored.
from django.apps import AppConfig  # type: ignore[import-untyped]


class ExampleConfig(AppConfig):  # type: ignore[misc]  # AppConfig is Any to mypy
    """Note when Django started (``ready`` runs once, when the ASGI application is built)."""

    name = "examples.django_project"
    started_at: float | None = None

    def ready(self) -> None:
        """Run once Django has loaded every app."""
        self.started_at = time.time()
