"""Ray Serve: the same server on a Ray cluster, each Serve replica with workers of its own (llama-isolate[ray]).

`build_app` makes a Ray Serve application of two deployments:

- the model replicas (`DEPLOYMENT_NAME`, `llama_isolate.server.ray_replica`):
  each runs the app of ``llama-isolate serve`` (`create_app`), so every
  endpoint, error and streaming rule is the same, with its own `LlamaParent`
  per model: a llama.cpp worker is still a child process of the replica, and
  a crash stays within it. Ray places them (on the nodes that have the
  resources asked for) and scales them between `min_replicas` and
  `max_replicas`, aiming at as many requests in flight per replica as it has
  slots (the models' ``parallel``);
- the front (`FRONT_NAME`, `llama_isolate.server.ray_front`): the ingress
  Serve's HTTP proxy calls, which reads each request and passes it on through
  a handle, so that the model deployment's router
  (`llama_isolate.server.ray_router.PrefixAffinityRouter`) can send it to the
  replica whose cache holds its conversation.

A client that disconnects cancels its request: the front's call is
cancelled, and with it the replica's; the server's cleanup (which such a
cancellation cannot cut short) stops the prompt in the engine.

`connect`, `check_free`, `deploy`, `watch` and `undeploy` join a cluster,
run the application there, wait, and delete it again: what
``llama-isolate serve --ray ADDRESS`` does. Importing `llama_isolate` or
running ``serve`` without ``--ray`` never imports Ray. See docs/ray.md.

Example::

    import ray
    from ray import serve
    from llama_isolate import LlamaLoad, default_model_path
    from llama_isolate.server.ray import build_app
    from llama_isolate.server import ServedModel

    ray.init(address="auto")
    serve.run(build_app([ServedModel("smol", LlamaLoad(path=default_model_path()))]), route_prefix="/")
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from llama_isolate import LlamaError

from . import ServedModel, create_app
from .app import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_QUEUE
from .middleware import DEFAULT_BODY_TIMEOUT_S, is_loopback

if TYPE_CHECKING:
    from ray.serve import Application

__all__ = [
    "APP_NAME",
    "DEPLOYMENT_NAME",
    "build_app",
    "check_free",
    "connect",
    "deploy",
    "undeploy",
    "watch",
]

logger = logging.getLogger(__name__)

DEPLOYMENT_NAME = "llama-isolate"
"""The model deployment's name (its replica actors are named after it)."""
FRONT_NAME = "llama-isolate-front"
"""The front deployment's name: the ingress Serve's HTTP proxy calls (see `llama_isolate.server.ray_front`)."""
FRONT_MAX_ONGOING = 10_000
"""Requests the front takes at once: it only reads and passes them on; the replicas bound the work."""
ROUTINGS = ("prefix", "default")
"""`build_app`'s choices of router for the model replicas."""
ROUTING_STATS_PERIOD_S = 1.0
"""How often Serve asks each model replica for the conversations its caches hold."""
APP_NAME = "llama-isolate"
"""The name `deploy` gives the Serve application."""
HEADROOM = 32
"""Requests a replica takes beyond its slots and queue: refusals (429), /health, /metrics."""
UNBOUNDED_QUEUE = 4096
"""Requests a replica takes into its queue when `max_queue` is None (no limit of its own)."""


def build_app(
    models: Sequence[ServedModel],
    *,
    min_replicas: int = 1,
    max_replicas: int | None = None,
    resources: Mapping[str, float] | None = None,
    num_cpus: float | None = None,
    num_gpus: float = 0,
    api_key: str | None = None,
    cors_origins: Sequence[str] = (),
    max_queue: int | None = DEFAULT_MAX_QUEUE,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    body_timeout: float = DEFAULT_BODY_TIMEOUT_S,
    init_timeout: float | None = None,
    drain_timeout: float = 30.0,
    trim_history: bool = False,
    allowed_hosts: Sequence[str] | None = None,
    routing: str = "prefix",
    autoscaling: Mapping[str, Any] | None = None,
) -> Application:
    """A Ray Serve application serving `models`: a front, and model replicas that each run `create_app`.

    Args:
        models: what each model replica serves, as for `create_app(models=...)`
            (a model's ``replicas`` are workers within each Serve replica).
        min_replicas, max_replicas: model replicas; Ray scales between the two
            when they differ (`max_replicas` defaults to `min_replicas`),
            aiming at one request in flight per slot of a replica.
        resources: custom Ray resources each model replica needs, which pins
            it to the nodes that have them (``{"llm": 1}``).
        num_cpus: CPUs Ray reserves for each model replica (default: the
            most threads any of its models uses).
        num_gpus: GPUs Ray reserves for each model replica.
        api_key, cors_origins, max_queue, max_body_bytes, body_timeout,
        init_timeout, trim_history, allowed_hosts: as for `create_app`.
        drain_timeout: seconds a replica that is stopping (scaled down,
            redeployed, deleted) gives its running requests to finish.
        routing: ``"prefix"`` (default): a request goes to the replica whose
            cache holds the longest prefix of its conversation, load
            permitting (`llama_isolate.server.ray_router.PrefixAffinityRouter`);
            ``"default"``: Ray's own router (two random replicas, the less
            busy one), for comparison.
        autoscaling: more of Serve's ``autoscaling_config`` (``upscale_delay_s``,
            ``downscale_delay_s``, ...) when the replica counts differ.

    Raises:
        ValueError: no models, replica counts out of order, or an unknown `routing`.
    """
    from ray import serve
    from ray.serve.config import RequestRouterConfig

    from .ray_replica import ModelReplica
    from .ray_router import PrefixAffinityRouter

    if not models:
        raise ValueError("build_app needs at least one model")
    max_replicas = min_replicas if max_replicas is None else max_replicas
    if not 1 <= min_replicas <= max_replicas:
        raise ValueError(f"need 1 <= min_replicas <= max_replicas, got {min_replicas} and {max_replicas}")
    if routing not in ROUTINGS:
        raise ValueError(f"routing must be one of {ROUTINGS}, got {routing!r}")
    models = list(models)
    slots = sum(model.load.context_params.n_parallel * model.replicas for model in models)
    threads = max(model.load.context_params.n_threads for model in models)
    app_options: dict[str, Any] = {
        "api_key": api_key,
        "cors_origins": tuple(cors_origins),
        "max_queue": max_queue,
        "max_body_bytes": max_body_bytes,
        "body_timeout": body_timeout,
        "init_timeout": init_timeout,
        "trim_history": trim_history,
        "allowed_hosts": None if allowed_hosts is None else tuple(allowed_hosts),
    }
    create_app(models=models, **app_options)  # checks every option here, not on a replica

    actor: dict[str, Any] = {"num_cpus": num_cpus if num_cpus is not None else threads}
    if num_gpus:
        actor["num_gpus"] = num_gpus
    if resources:
        actor["resources"] = dict(resources)
    options: dict[str, Any] = {
        "name": DEPLOYMENT_NAME,
        "ray_actor_options": actor,
        # Requests beyond the slots wait in the replica's own queue, which answers 429 past max_queue; the
        # headroom lets those 429s, /health and /metrics through while slots and queue are full.
        "max_ongoing_requests": slots + (max_queue if max_queue is not None else UNBOUNDED_QUEUE) + HEADROOM,
        "graceful_shutdown_timeout_s": drain_timeout,
    }
    if routing == "prefix":
        options["request_router_config"] = RequestRouterConfig(
            request_router_class=f"{PrefixAffinityRouter.__module__}.{PrefixAffinityRouter.__name__}",
            request_routing_stats_period_s=ROUTING_STATS_PERIOD_S,
        )
    if max_replicas > min_replicas:
        options["autoscaling_config"] = {
            "min_replicas": min_replicas,
            "max_replicas": max_replicas,
            "target_ongoing_requests": slots,
            **(autoscaling or {}),
        }
    else:
        options["num_replicas"] = min_replicas
    model = serve.deployment(ModelReplica, **options).bind(models, app_options)
    front_options = {
        "max_body_bytes": max_body_bytes,
        "body_timeout": body_timeout,
        "api_key": api_key,
        "allowed_hosts": app_options["allowed_hosts"],
        "cors_origins": app_options["cors_origins"],
    }
    front = serve.deployment(
        serve.ingress()(_front_class(front_options)),
        name=FRONT_NAME,
        num_replicas=1,
        ray_actor_options={"num_cpus": 0},
        max_ongoing_requests=FRONT_MAX_ONGOING,
        graceful_shutdown_timeout_s=drain_timeout,
    )
    return front.bind(model)


def _front_class(options: dict[str, Any]) -> type:
    """The front deployment's class: the model deployment's handle in, `front_app` out."""

    class Front:
        def __init__(self, model: Any) -> None:
            from ray import serve

            self._stream = model.options(stream=True)
            self._app_name = serve.get_replica_context().app_name
            self._model_name = model.deployment_name

        def __serve_build_asgi_app__(self) -> Any:
            from .ray_front import front_app, replicas_of

            def replicas() -> list[str] | None:
                return replicas_of(self._app_name, self._model_name)

            return front_app(lambda: self._stream.http.remote, replicas, **options)

    return Front


def connect(address: str, *, timeout: float = 10.0) -> None:
    """Connect this process to the Ray cluster at `address` (``auto``, ``HEAD:PORT`` or ``ray://HEAD:PORT``).

    A cluster on this machine's loopback (``127.0.0.1:6379``) is joined on
    loopback too, so that no traffic leaves the machine.

    Raises:
        ConnectionError: nothing answers at `address` (checked within
            `timeout` seconds first: Ray itself keeps retrying for minutes),
            or no cluster runs on this machine for ``auto``.
    """
    import ray

    host, port = _host_port(address)
    if port is not None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
        except OSError as exc:
            raise ConnectionError(f"no Ray cluster answers at {address} ({exc})") from None
    init: dict[str, Any] = {"address": address, "logging_level": logging.WARNING, "log_to_driver": False}
    if is_loopback(host) and not address.startswith("ray://"):  # Ray Client starts no node here
        init["_node_ip_address"] = "127.0.0.1"
    try:
        ray.init(**init)
    except ConnectionError as exc:
        raise ConnectionError(f"cannot join a Ray cluster at {address!r}: {exc}") from None


def deploy(
    app: Application,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    stop: threading.Event | None = None,
    report_every: float = 30.0,
) -> str | None:
    """Run `app` on the cluster `connect` joined, as `APP_NAME` at ``/``; its URL once every replica is ready.

    Serve's HTTP proxies listen on `host`:`port` on every node. When Serve
    already runs on the cluster, they keep the host and port they started
    with, and the URL says so. While replicas load (or wait for a node with
    the resources they need), the state is logged every `report_every`
    seconds.

    Returns:
        The URL, or None if `stop` was set before the replicas were ready
        (the application is then still there: `undeploy` deletes it).

    Raises:
        LlamaError: an application of that name already runs on the cluster
            (another ``serve --ray``), or Serve could not deploy it.
    """
    from ray import serve
    from ray.serve.schema import ApplicationStatus

    check_free()
    if serve.status().proxies:
        logger.warning("Serve already runs on this cluster: its HTTP proxies keep their own host and port")
    _start_proxies(host, port, stop)
    serve.run_many([serve.RunTarget(app, name=APP_NAME, route_prefix="/")], wait_for_applications_running=False)
    stop = stop or threading.Event()  # never set: wait for the replicas
    reported = time.monotonic()
    while not stop.wait(0.25):
        state = serve.status().applications.get(APP_NAME)
        if state is None or state.status == ApplicationStatus.DEPLOY_FAILED:
            raise LlamaError(f"Serve could not deploy the application: {state.message if state else 'it is gone'}")
        if state.status == ApplicationStatus.RUNNING:
            return _proxy_url(host, port)
        if time.monotonic() - reported >= report_every:
            reported = time.monotonic()
            waiting = "; ".join(f"{name}: {d.message or d.status}" for name, d in state.deployments.items())
            logger.info("still deploying (%s): %s", state.status, waiting or state.message)
    return None


PROXY_ATTEMPTS = 4
"""How many times `deploy` lets Serve start its HTTP proxies: each attempt has Serve's own 60 s."""


def _start_proxies(host: str, port: int, stop: threading.Event | None) -> None:
    """Start Serve with its HTTP proxies on `host`:`port`, trying again while they are slow to come up.

    Serve gives its proxies 60 s to start, and kills them past that. On a cluster whose CPUs are all busy a
    proxy's process can take longer just to import Ray; the next attempt finds it further along.
    """
    from ray import serve
    from ray.exceptions import RayActorError

    for attempt in range(1, PROXY_ATTEMPTS + 1):
        try:
            serve.start(http_options={"host": host, "port": port})
            return
        except (TimeoutError, RayActorError) as exc:
            if attempt == PROXY_ATTEMPTS or (stop is not None and stop.is_set()):
                raise LlamaError(f"Serve's HTTP proxies did not start after {attempt} attempts: {exc}") from exc
            logger.warning("Serve's HTTP proxies did not start in time (a busy cluster?); trying again")


def check_free() -> None:
    """Raise `LlamaError` if an application named `APP_NAME` already runs on the cluster `connect` joined."""
    from ray import serve

    if APP_NAME in serve.status().applications:
        raise LlamaError(
            f"an application named {APP_NAME!r} already runs on this cluster (another `serve --ray`?): "
            "stop that one first"
        )


def watch(stop: threading.Event, every: float = 5.0) -> str | None:
    """Wait until `stop` is set (None), or until the application `deploy` ran is gone (why, as a sentence).

    The cluster going away is noticed too, once Ray gives up reaching it.
    """
    from ray import serve

    while not stop.wait(every):
        try:
            state = serve.status().applications.get(APP_NAME)
        except Exception as exc:  # Ray's errors for a cluster it cannot reach have no common type
            return f"the Ray cluster does not answer: {exc}"
        if state is None:
            return "the application was deleted from the cluster by someone else"
    return None


def _proxy_url(host: str, port: int) -> str:
    """Where Serve's proxies listen: the options they started with, which may predate this `deploy`."""
    try:
        from ray.serve.context import _get_global_client

        options = _get_global_client().http_config
        host, port = options.host, options.port
    except Exception:  # a private detail of Ray: without it, say what was asked for
        logger.debug("Serve's HTTP options are not known here", exc_info=True)
    return f"http://{host}:{port}"


def undeploy() -> None:
    """Delete the application `deploy` ran (its replicas and their workers end) and disconnect from the cluster."""
    import ray
    from ray import serve

    try:
        serve.delete(APP_NAME)
    finally:
        ray.shutdown()


def _host_port(address: str) -> tuple[str, int | None]:
    """`address`'s host and port (no port: ``auto`` and other names Ray resolves itself)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return address, None
    return host.strip("[]"), int(port)
