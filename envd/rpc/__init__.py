"""Glue between the ASGI stack and the Connect services: codecs, request context, errors."""
