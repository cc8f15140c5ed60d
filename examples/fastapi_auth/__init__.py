"""FastAPI with a login, a negotiate route and private rooms ``chats/{id}`` for their members."""
