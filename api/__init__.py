"""The HTTP API: OpenAI-compatible routes under /v1, provider routes under /admin."""
