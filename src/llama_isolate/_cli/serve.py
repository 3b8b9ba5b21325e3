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
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._errors import LlamaError
from .._grammar.tools import CHATML_TOOLS_TEMPLATE
from .._model_path import default_model_path
from .._params import MAX_DRAFT, ContextParams, LlamaLoad, Speculative

# "auto" on a CPU is measured on the first load of a model on the machine (ContextParams.flash_attention).
DEFAULT_FLASH_ATTENTION = "auto"
# 8 slots: the batch still grows faster than its cost on 2 cores (8 sequences decode at 2.1x one's tok/s), and a
# burst of 8 clients is served at once (docs/performance.md).
DEFAULT_PARALLEL = 8

API_KEY_ENV = "LLAMA_ISOLATE_API_KEY"
DEFAULT_PORT = 8080
DEFAULT_RAY_CPUS = 2
DEFAULT_SPECULATIVE_MAX = 16  # the most tokens guessed per conversation and step, as Speculative's default

logger = logging.getLogger(__name__)


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
    model.add_argument(
        "--model",
        action="append",
        metavar="[NAME=]PATH",
        help="GGUF model file (default: the embedded SmolLM2-135M); repeat as NAME=PATH to serve several models, "
        "which requests pick by their 'model' field",
    )
    model.add_argument(
        "--replicas",
        type=int,
        default=1,
        metavar="N",
        help="copies of each model, each a worker process of its own; a conversation goes back to the copy that "
        "holds its cache (default 1; see docs/scaling.md). With --ray: Serve replicas, each holding every model",
    )
    model.add_argument(
        "--config",
        metavar="FILE",
        help="a TOML file of [models.NAME] tables (path, mmproj, ctx, parallel, replicas, threads, chat_template), "
        "instead of --model; and for --ray an optional [ray] table (min_replicas, max_replicas, resources, "
        "num_cpus, num_gpus)",
    )
    model.add_argument("--mmproj", metavar="PATH", help="multimodal projector GGUF: enables image content parts")
    model.add_argument("--model-name", metavar="NAME", help="the id /v1/models shows (default: the file name)")
    model.add_argument(
        "--parallel",
        type=int,
        default=DEFAULT_PARALLEL,
        metavar="N",
        help=f"conversations decoded together in one batch (default {DEFAULT_PARALLEL}); each keeps a KV cache of "
        "--ctx tokens (about 94 MB at 4096 for the default model). More clients than this wait for a slot: 8 "
        "clients got 0.87x the tokens per second with 4 slots, and their longest first token took 2.7 s",
    )
    model.add_argument("--ctx", type=int, default=4096, metavar="N", help="context of each conversation (default 4096)")
    model.add_argument("--threads", type=int, metavar="N", help="CPU threads (default: all available)")
    model.add_argument(
        "--flash-attention",
        choices=("auto", "on", "off"),
        default=DEFAULT_FLASH_ATTENTION,
        help="llama.cpp's flash attention (default auto: on a CPU, whichever was faster when both were measured on "
        "the first load of the model on this machine, a few seconds once; with a GPU, llama.cpp's choice)",
    )
    model.add_argument(
        "--chat-template",
        metavar="FILE|chatml-tools",
        help="a Jinja chat template file instead of the model's own; 'chatml-tools' is the built-in ChatML template "
        "that shows tools (for `tools` with the default model, whose own template ignores them)",
    )
    model.add_argument(
        "--speculative",
        choices=("off", "ngram"),
        default="off",
        help="speculative decoding (default off): 'ngram' guesses the next tokens from the conversation itself and "
        "checks them in one pass, which pays on replies that repeat their input (edits, quotes, filled-in "
        "forms); the text stays the model's own (docs/speculative.md)",
    )
    model.add_argument(
        "--speculative-draft",
        metavar="PATH",
        help="speculative decoding with a draft model: a smaller GGUF with the same vocabulary, run beside the "
        "model in its worker (its vocabulary is checked at load)",
    )
    model.add_argument(
        "--speculative-max",
        type=int,
        default=DEFAULT_SPECULATIVE_MAX,
        metavar="N",
        help=f"the most tokens guessed for one conversation in one step (default {DEFAULT_SPECULATIVE_MAX}; "
        f"at most {MAX_DRAFT})",
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
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="on a loopback --host, also answer requests whose Host header is NAME (a pattern such as "
        "*.example.test; '*' for any). Other names get 403, against DNS rebinding; addresses always pass",
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
        "--trim-history",
        action="store_true",
        help="a chat longer than the context loses its oldest turns (usage.dropped_messages says how many) "
        "instead of getting 400 context_length_exceeded; a request's trim_history field overrides it",
    )
    http.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="on SIGTERM, stop accepting and give running requests this long to finish; then the rest end with "
        "an error (default 30)",
    )
    http.add_argument(
        "--body-timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="seconds a request's body may take to arrive; a slower one gets 408 (default 30)",
    )
    on_ray = serve.add_argument_group("ray (needs llama-isolate[ray]; see docs/ray.md)")
    on_ray.add_argument(
        "--ray",
        metavar="ADDRESS",
        help="deploy to the Ray cluster at ADDRESS (auto, HEAD:PORT or ray://HEAD:PORT) as a Ray Serve application "
        "instead of serving here; Serve's HTTP proxy listens on --host and --port of every node. Ctrl-C or "
        "SIGTERM deletes the application",
    )
    on_ray.add_argument(
        "--max-replicas",
        type=int,
        metavar="N",
        help="let Ray scale between --replicas and N Serve replicas, aiming at one request per slot (default: "
        "--replicas, no scaling)",
    )
    on_ray.add_argument(
        "--ray-resource",
        action="append",
        default=[],
        metavar="NAME=AMOUNT",
        help="a custom Ray resource each Serve replica needs, which keeps replicas on the nodes started with it "
        "(repeatable; e.g. llm=1)",
    )
    on_ray.add_argument(
        "--ray-cpus",
        type=float,
        metavar="N",
        help=f"CPUs Ray reserves for each Serve replica (default: --threads, else {DEFAULT_RAY_CPUS}; without "
        "--threads the models use this many threads)",
    )
    on_ray.add_argument(
        "--ray-gpus", type=float, default=0, metavar="N", help="GPUs Ray reserves for each Serve replica"
    )
    on_ray.add_argument(
        "--ray-routing",
        choices=("prefix", "default"),
        default=None,
        help="which Serve replica a request goes to: prefix (default), the one whose cache holds the longest "
        "prefix of its conversation, unless it is full; default: Ray's own router (two random replicas, the "
        "less busy one)",
    )


@dataclass(frozen=True)
class ModelPlan:
    """One model to serve: its name (None: the file's), what to load, and how many replicas."""

    name: str | None
    load: LlamaLoad
    replicas: int


@dataclass(frozen=True)
class RayPlan:
    """Where `serve --ray` deploys, and each Serve replica's count and resources (`llama_isolate.ray.build_app`)."""

    address: str
    min_replicas: int
    max_replicas: int
    resources: dict[str, float]
    num_cpus: float
    num_gpus: float
    routing: str = "prefix"


@dataclass(frozen=True)
class ServePlan:
    """What `serve` runs: the models, and the Ray cluster to run them on (None: here, under uvicorn)."""

    models: list[ModelPlan]
    ray: RayPlan | None = None


def describe(args: argparse.Namespace) -> ServePlan:
    """The models (and Ray deployment) the options describe; ValueError names a bad value (exit 2 before loading)."""
    config = _read_config(args.config) if args.config is not None else {}
    ray = _ray_plan(args, config.get("ray", {})) if args.ray is not None else None
    only_ray = (
        config.get("ray"),
        args.max_replicas is not None,
        args.ray_resource,
        args.ray_cpus is not None,
        args.ray_routing is not None,
    )
    if ray is None and (any(only_ray) or args.ray_gpus):
        raise ValueError(
            "the [ray] table, --max-replicas, --ray-resource, --ray-cpus, --ray-gpus and --ray-routing are for --ray"
        )
    if ray is not None:
        # --replicas counted Serve replicas; without --threads, use the threads the replica has, not this machine's
        threads = args.threads if args.threads is not None else max(1, math.floor(ray.num_cpus))
        args = argparse.Namespace(**{**vars(args), "replicas": 1, "threads": threads})
    if args.config is not None:
        if args.model or args.mmproj or args.model_name:
            raise ValueError("--config names the models: give no --model, --mmproj or --model-name with it")
        return ServePlan(_from_config(args, config), ray)
    return ServePlan(_from_options(args), ray)


def _ray_plan(args: argparse.Namespace, table: Any) -> RayPlan:
    """`--ray`'s options, then a config's [ray] table over them."""
    known = {"min_replicas", "max_replicas", "resources", "num_cpus", "num_gpus", "routing"}
    if not isinstance(table, dict) or set(table) - known:
        raise ValueError(f"--config {args.config!r} [ray]: unknown keys (known: {sorted(known)})")
    resources: dict[str, Any] = {}
    for given in args.ray_resource:
        name, _, amount = given.partition("=")
        try:
            resources[name] = float(amount)
        except ValueError:
            raise ValueError(f"--ray-resource {given!r}: expected NAME=AMOUNT") from None
    extra = table.get("resources", {})
    if not isinstance(extra, dict):
        raise ValueError(f"--config {args.config!r} [ray]: resources must be a table of NAME = AMOUNT")
    resources |= extra
    for name, amount in resources.items():
        if not name or isinstance(amount, bool) or not isinstance(amount, (int, float)) or not amount > 0:
            raise ValueError(f"a Ray resource needs a name and an amount > 0, got {name!r} = {amount!r}")
    low = _replicas("min_replicas (--replicas)", table.get("min_replicas", args.replicas))
    high = args.max_replicas if args.max_replicas is not None else low
    high = _replicas("max_replicas (--max-replicas)", table.get("max_replicas", high))
    if high < low:
        raise ValueError(f"--max-replicas ({high}) is below --replicas ({low})")
    cpus = table.get("num_cpus", args.ray_cpus if args.ray_cpus is not None else args.threads or DEFAULT_RAY_CPUS)
    gpus = table.get("num_gpus", args.ray_gpus)
    for what, value, least in (("--ray-cpus", cpus, 0.0), ("--ray-gpus", gpus, 0.0)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < least:
            raise ValueError(f"{what} must be a number >= 0, got {value!r}")
    routing = table.get("routing", args.ray_routing or "prefix")
    if routing not in ("prefix", "default"):
        raise ValueError(f"--config {args.config!r} [ray]: routing must be prefix or default, got {routing!r}")
    return RayPlan(args.ray, low, high, {k: float(v) for k, v in resources.items()}, float(cpus), float(gpus), routing)


def _replicas(what: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be an int >= 1, got {value!r}")
    return value


def _from_options(args: argparse.Namespace) -> list[ModelPlan]:
    models = args.model or [None]
    if len(models) > 1 and (args.mmproj or args.model_name):
        raise ValueError("--mmproj and --model-name are for one model; put several in a --config file")
    plans = []
    for given in models:
        name, path = _named(given)
        plans.append(ModelPlan(name or args.model_name, _describe_load(args, path, args.mmproj), args.replicas))
    names = [plan.name for plan in plans]
    if len(plans) > 1 and (None in names or len(set(names)) != len(names)):
        raise ValueError(f"several --model options need distinct NAME=PATH forms, got {args.model}")
    return plans


def _named(given: str | None) -> tuple[str | None, str | None]:
    """``NAME=PATH`` as its two parts; a plain path (one with a '/' before any '=') has no name."""
    if given is None or "=" not in given or "/" in given.split("=", 1)[0]:
        return None, given
    name, path = given.split("=", 1)
    if not name or not path:
        raise ValueError(f"--model {given!r}: expected NAME=PATH")
    return name, path


def _read_config(path: str) -> dict[str, Any]:
    """A TOML config file's tables."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - the server extra installs tomli there
        import tomli as tomllib
    try:
        with open(path, "rb") as f:
            tables: dict[str, Any] = tomllib.load(f)
            return tables
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"--config {path!r} cannot be read: {exc}") from None


def _from_config(args: argparse.Namespace, config: dict[str, Any]) -> list[ModelPlan]:
    """The [models.NAME] tables of a TOML file; each key overrides the option of the same name."""
    tables = config.get("models")
    if not isinstance(tables, dict) or not tables:
        raise ValueError(f"--config {args.config!r} has no [models.NAME] tables")
    known = {"path", "mmproj", "ctx", "parallel", "replicas", "threads", "chat_template", "speculative"}
    plans = []
    for name, table in tables.items():
        where = f"--config {args.config!r} [models.{name}]"
        if not isinstance(table, dict) or not isinstance(table.get("path"), str):
            raise ValueError(f"{where} needs a path")
        unknown = set(table) - known
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)} (known: {sorted(known)})")
        for key in ("ctx", "parallel", "replicas", "threads"):
            if key in table and (not isinstance(table[key], int) or isinstance(table[key], bool) or table[key] < 1):
                raise ValueError(f"{where}: {key} must be an int >= 1, got {table[key]!r}")
        options = argparse.Namespace(**vars(args))
        for key, attribute in (("ctx", "ctx"), ("parallel", "parallel"), ("threads", "threads")):
            if key in table:
                setattr(options, attribute, table[key])
        if "chat_template" in table:
            options.chat_template = table["chat_template"]
        if "speculative" in table:  # "off", "ngram", or a draft model's path
            choice = table["speculative"]
            if not isinstance(choice, str) or not choice:
                raise ValueError(f"{where}: speculative must be 'off', 'ngram' or a draft model's path, got {choice!r}")
            options.speculative, options.speculative_draft = (
                (choice, None) if choice in ("off", "ngram") else ("off", choice)
            )
        plans.append(
            ModelPlan(name, _describe_load(options, table["path"], table.get("mmproj")), table.get("replicas", 1))
        )
    return plans


def _describe_load(args: argparse.Namespace, path: str | None, mmproj: str | None) -> LlamaLoad:
    """One model's load from the options (and a config table's values put in them)."""
    if args.replicas < 1:
        raise ValueError(f"--replicas must be >= 1, got {args.replicas}")
    for name in ("parallel", "max_queue", "max_body_bytes"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    key = args.api_key
    if key and (not key.isascii() or not key.isprintable() or " " in key):
        raise ValueError("--api-key must be printable ASCII without spaces (it travels in an HTTP header)")
    if not (math.isfinite(args.body_timeout) and args.body_timeout > 0):
        raise ValueError(f"--body-timeout must be a number of seconds > 0, got {args.body_timeout}")
    if not (math.isfinite(args.drain_timeout) and args.drain_timeout >= 0):
        raise ValueError(f"--drain-timeout must be a number of seconds >= 0, got {args.drain_timeout}")
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
        path=path or default_model_path(),
        mmproj_path=mmproj,
        context_params=ContextParams(**context),
        chat_template=CHATML_TOOLS_TEMPLATE if template == "chatml-tools" else template,
        speculative=speculative_of(args),
        verbose=args.verbose,
    )


def speculative_of(args: argparse.Namespace) -> Speculative | None:
    """--speculative, --speculative-draft and --speculative-max as a `Speculative` (None: off)."""
    if args.speculative_draft is not None and args.speculative == "ngram":
        raise ValueError("--speculative ngram and --speculative-draft exclude each other: choose one")
    if args.speculative_draft is None and args.speculative == "off":
        if args.speculative_max != DEFAULT_SPECULATIVE_MAX:
            raise ValueError("--speculative-max needs --speculative ngram or --speculative-draft PATH")
        return None
    if not 1 <= args.speculative_max <= MAX_DRAFT:
        raise ValueError(f"--speculative-max must be between 1 and {MAX_DRAFT}, got {args.speculative_max}")
    if args.speculative_draft is not None:
        if not args.speculative_draft:
            raise ValueError("--speculative-draft needs the draft model's path")
        return Speculative(mode="draft", draft_model_path=args.speculative_draft, max_draft=args.speculative_max)
    return Speculative(max_draft=args.speculative_max)


def run(args: argparse.Namespace, plan: ServePlan) -> int:
    """Serve until SIGTERM (exit 0) or Ctrl-C (exit 130); the workers are stopped either way."""
    try:
        import uvicorn

        from ..server import ServedModel, create_app
        from ..server.middleware import LOOPBACK_HOSTS, is_loopback
        from ..server.service import model_name_of
    except ImportError as exc:
        raise LlamaError(f"serve needs the server extra: pip install 'llama-isolate[server]' ({exc})") from exc
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(name)s: %(message)s")
    models = [ServedModel(model.name or model_name_of(model.load), model.load, model.replicas) for model in plan.models]
    options: dict[str, Any] = {
        "api_key": args.api_key or None,
        "cors_origins": args.cors_origin,
        "max_queue": args.max_queue,
        "max_body_bytes": args.max_body_bytes,
        "body_timeout": args.body_timeout,
        "trim_history": args.trim_history,
    }
    if is_loopback(args.host):  # this machine only: check Host names, against DNS rebinding
        options["allowed_hosts"] = [*LOOPBACK_HOSTS, *args.allowed_host]
    elif args.allowed_host:
        options["allowed_hosts"] = list(args.allowed_host)
    if plan.ray is not None:
        return _run_on_ray(args, plan.ray, models, options)
    app = create_app(models=models, **options)
    # uvicorn shuts down gracefully on SIGTERM, then raises the signal again
    # under the handler that was there before it: this one, so the process
    # exits 0 (Ctrl-C still ends as KeyboardInterrupt, exit 130).
    signal.signal(signal.SIGTERM, lambda *_: None)
    pool = app.state.pool

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            # uvicorn stops accepting and waits for the requests running; those still running when the
            # drain deadline comes end then, with a 503 or an error event, before its own grace period cuts
            # the connections.
            draining = not self.should_exit
            super().handle_exit(sig, frame)
            if draining:
                loop = asyncio.get_running_loop()
                loop.call_soon_threadsafe(loop.call_later, args.drain_timeout, pool.begin_shutdown)

    grace = args.drain_timeout + 5  # then uvicorn cuts what is left
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="info", timeout_graceful_shutdown=grace)
    Server(config).run()
    return 0


def _run_on_ray(args: argparse.Namespace, plan: RayPlan, models: list[Any], options: dict[str, Any]) -> int:
    """Deploy to the cluster, then wait for SIGTERM (exit 0) or Ctrl-C (exit 130); the app is deleted either way."""
    try:
        from ..server.ray import build_app, check_free, connect, deploy, undeploy, watch
    except ImportError as exc:  # pragma: no cover - the dev extra installs Ray
        raise LlamaError(f"serve --ray needs the ray extra: pip install 'llama-isolate[ray]' ({exc})") from exc
    app = build_app(
        models,
        min_replicas=plan.min_replicas,
        max_replicas=plan.max_replicas,
        resources=plan.resources,
        num_cpus=plan.num_cpus,
        num_gpus=plan.num_gpus,
        routing=plan.routing,
        drain_timeout=args.drain_timeout,
        **options,
    )
    connect(plan.address)
    check_free()  # before the try: what runs there is someone else's, not to be deleted
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())  # after connecting: Ray's own handler aborts the process
    try:
        url = deploy(app, host=args.host, port=args.port, stop=stop)
        if url is not None:
            logger.info("serving on the Ray cluster at %s: %s (SIGTERM or Ctrl-C deletes it)", plan.address, url)
            gone = watch(stop)
            if gone is not None:
                raise LlamaError(gone)
        logger.info("deleting the application: running requests have %s s to finish", args.drain_timeout)
    finally:
        undeploy()
    return 0
