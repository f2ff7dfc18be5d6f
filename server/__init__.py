"""Serving side of bonserve: OpenAI-compatible API over in-process vLLM engines."""

__version__ = "0.1.0"
