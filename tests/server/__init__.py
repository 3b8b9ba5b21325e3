"""The OpenAI-compatible server over HTTP: its routes, bounds, cancels, replicas, tools, `serve`, the chat page, Ray."""
