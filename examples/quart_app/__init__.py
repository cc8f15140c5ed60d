"""Quart with channel_asgi wrapped around ``app.asgi_app`` under ``/channel``."""
