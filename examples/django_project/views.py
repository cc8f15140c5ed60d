"""The page, a view that publishes (server-side emit), and a status view."""

from __future__ import annotations

import json

# Django ships no type hints (django-stubs is not a dependency): its imports are ignored.
from django.apps import apps  # type: ignore[import-untyped]
from django.http import HttpRequest, HttpResponse, JsonResponse  # type: ignore[import-untyped]
from django.shortcuts import render  # type: ignore[import-untyped]
from django.views.decorators.http import require_POST  # type: ignore[import-untyped]

from .apps import ExampleConfig
from .realtime import LOBBY, channels


async def index(request: HttpRequest) -> HttpResponse:
    """Serve the chat page (its template puts the CSRF token where the page's script finds it)."""
    return render(request, "index.html")


@require_POST  # type: ignore[untyped-decorator]  # Django has no type hints
async def announce(request: HttpRequest) -> JsonResponse:
    """Broadcast ``{"text": ...}`` to the lobby from the server (its author is ``"0"``)."""
    try:
        body = json.loads(request.body)
    except ValueError:  # not JSON
        body = None
    text = body.get("text") if isinstance(body, dict) else None
    if not isinstance(text, str) or not text:
        return JsonResponse({"error": "text must be a non-empty string"}, status=400)
    event_id = await channels.publish(LOBBY, {"text": text})
    return JsonResponse({"id": event_id})


async def status(request: HttpRequest) -> JsonResponse:
    """Report whether ``ExampleConfig.ready`` ran, and how many people are in the lobby."""
    config = apps.get_app_config("django_project")
    started = isinstance(config, ExampleConfig) and config.started_at is not None
    return JsonResponse({"started": started, "viewers": await channels.viewer_count(LOBBY)})
