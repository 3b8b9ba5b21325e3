"""An OpenAI-compatible HTTP server on llama_isolate (install ``llama-isolate[server]``).

``llama-isolate serve`` runs it; `create_app` returns the same ASGI app for
mounting in your own service, serving one model or several (`ServedModel`),
each in one or more replicas. See docs/server.md and docs/scaling.md.

Example::

    from llama_isolate.server import create_app

    app = create_app()  # then: uvicorn module:app
"""

from .app import create_app
from .pool import ServedModel

__all__ = ["ServedModel", "create_app"]
