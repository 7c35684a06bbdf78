"""The HTTP API (`envrestore api`): a thin ASGI layer over the producer API (envrestore.client)."""
