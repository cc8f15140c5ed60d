"""Host applications that mount channel_asgi; each module docstring says how to run it."""
