"""`llama_isolate.ray`, kept for existing imports: the Ray Serve deployment lives in `llama_isolate.server.ray`.

Example::

    from llama_isolate.ray import build_app  # the same function as llama_isolate.server.ray.build_app
"""

from __future__ import annotations

from .server.ray import APP_NAME, DEPLOYMENT_NAME, build_app, check_free, connect, deploy, undeploy, watch

__all__ = ["APP_NAME", "DEPLOYMENT_NAME", "build_app", "check_free", "connect", "deploy", "undeploy", "watch"]
