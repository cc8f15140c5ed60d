"""FastAPI with channel_asgi mounted under ``/channel``."""
