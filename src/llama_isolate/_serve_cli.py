"""`llama-isolate serve`: its options, the load they describe, and running uvicorn.

The server itself (FastAPI, uvicorn) is imported only when the command runs,
so the rest of the command line works without the ``server`` extra.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import signal
from pathlib import Path
from typing import Any

from ._errors import LlamaError
from ._model_path import default_model_path
from ._params import ContextParams, LlamaLoad
from ._tools import CHATML_TOOLS_TEMPLATE

# "auto" is off on a CPU (see ContextParams.flash_attention): measured here (bench prefix), with flash
# attention the 20-token next turn of a 2,650-token conversation took 1.5 s on 2 CPU threads, without it 0.3 s.
DEFAULT_FLASH_ATTENTION = "auto"

API_KEY_ENV = "LLAMA_ISOLATE_API_KEY"
DEFAULT_PORT = 8080


def add_parser(commands: Any) -> None:
    """The `serve` subcommand and its options."""
    serve = commands.add_parser(
        "serve",
        help="an OpenAI-compatible HTTP server (needs llama-isolate[server])",
        description="Serve a model over OpenAI's HTTP API (/v1/chat/completions, /v1/completions, "
        "/v1/embeddings, /v1/models), with /health, /metrics and a chat page at /. "
        "See docs/server.md.",
    )
    model = serve.add_argument_group("model")
    model.add_argument("--model", metavar="PATH", help="GGUF model file (default: the embedded SmolLM2-135M)")
    model.add_argument("--mmproj", metavar="PATH", help="multimodal projector GGUF: enables image content parts")
    model.add_argument("--model-name", metavar="NAME", help="the id /v1/models shows (default: the file name)")
    model.add_argument(
        "--parallel", type=int, default=4, metavar="N", help="conversations decoded together in one batch (default 4)"
    )
    model.add_argument("--ctx", type=int, default=4096, metavar="N", help="context of each conversation (default 4096)")
    model.add_argument("--threads", type=int, metavar="N", help="CPU threads (default: all available)")
    model.add_argument(
        "--flash-attention",
        choices=("auto", "on", "off"),
        default=DEFAULT_FLASH_ATTENTION,
        help="llama.cpp's flash attention (default auto: off when no layer runs on a GPU, where it made generation "
        "slower and a short turn after a long history several times slower; llama.cpp's choice otherwise)",
    )
    model.add_argument(
        "--chat-template",
        metavar="FILE|chatml-tools",
        help="a Jinja chat template file instead of the model's own; 'chatml-tools' is the built-in ChatML template "
        "that shows tools (for `tools` with the default model, whose own template ignores them)",
    )
    model.add_argument("--verbose", action="store_true", help="show llama.cpp's own log on stderr")
    http = serve.add_argument_group("http")
    http.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    http.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    http.add_argument(
        "--api-key",
        metavar="KEY",
        default=os.environ.get(API_KEY_ENV),
        help=f"require 'Authorization: Bearer KEY' on all but /health and the page (default: ${API_KEY_ENV})",
    )
    http.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="let browser pages from ORIGIN call the API (repeatable; default: none)",
    )
    http.add_argument(
        "--max-queue", type=int, default=256, metavar="N", help="prompts that may wait for a slot; more get 429"
    )
    http.add_argument(
        "--max-body-bytes", type=int, default=32 * 2**20, metavar="N", help="larger request bodies get 413 (32 MiB)"
    )
    http.add_argument(
        "--body-timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="seconds a request's body may take to arrive; a slower one gets 408 (default 30)",
    )


def describe(args: argparse.Namespace) -> LlamaLoad:
    """The load the options describe; ValueError names a bad value (exit 2 before anything loads)."""
    for name in ("parallel", "max_queue", "max_body_bytes"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    key = args.api_key
    if key and (not key.isascii() or not key.isprintable() or " " in key):
        raise ValueError("--api-key must be printable ASCII without spaces (it travels in an HTTP header)")
    if not (math.isfinite(args.body_timeout) and args.body_timeout > 0):
        raise ValueError(f"--body-timeout must be a number of seconds > 0, got {args.body_timeout}")
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be 0..65535, got {args.port}")
    context: dict[str, Any] = {
        "n_ctx": args.ctx,
        "n_parallel": args.parallel,
        "embeddings": True,
        "flash_attention": args.flash_attention,
    }
    if args.threads is not None:
        context |= {"n_threads": args.threads, "n_threads_batch": args.threads}
    template = args.chat_template
    if template is not None and template != "chatml-tools":
        try:
            template = Path(template).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"--chat-template {args.chat_template!r} cannot be read: {exc}") from None
    return LlamaLoad(
        path=args.model or default_model_path(),
        mmproj_path=args.mmproj,
        context_params=ContextParams(**context),
        chat_template=CHATML_TOOLS_TEMPLATE if template == "chatml-tools" else template,
        verbose=args.verbose,
    )


def run(args: argparse.Namespace, load: LlamaLoad) -> int:
    """Serve until SIGTERM (exit 0) or Ctrl-C (exit 130); the worker is stopped either way."""
    try:
        import uvicorn

        from .server import create_app
    except ImportError as exc:
        raise LlamaError(f"serve needs the server extra: pip install 'llama-isolate[server]' ({exc})") from exc
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(name)s: %(message)s")
    app = create_app(
        load,
        model_name=args.model_name,
        api_key=args.api_key or None,
        cors_origins=args.cors_origin,
        max_queue=args.max_queue,
        max_body_bytes=args.max_body_bytes,
        body_timeout=args.body_timeout,
    )
    # uvicorn shuts down gracefully on SIGTERM, then raises the signal again
    # under the handler that was there before it: this one, so the process
    # exits 0 (Ctrl-C still ends as KeyboardInterrupt, exit 130).
    signal.signal(signal.SIGTERM, lambda *_: None)
    service = app.state.service

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            super().handle_exit(sig, frame)
            # Pending requests end now, with a 503 or an error event, instead
            # of being cut when uvicorn's grace period for connections ends.
            asyncio.get_running_loop().call_soon_threadsafe(service.begin_shutdown)

    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="info", timeout_graceful_shutdown=5)
    Server(config).run()
    return 0
