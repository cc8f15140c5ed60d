"""A minimal Django project with channel_asgi wrapped around its ASGI application."""
