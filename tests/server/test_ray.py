"""`serve --ray` on a real two-node Ray cluster on this machine: placement, streaming, embeddings, cancels, crashes.

The cluster is `ray.cluster_utils.Cluster`: a head node, and a second node that
alone has the custom resource ``llm``. The command line deploys the server
there (``--ray-resource llm=1``), and an `openai` client talks to Serve's HTTP
proxy. About half a minute here; `pytest -m "not ray"` skips it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import psutil
import pytest

from ..helpers.cli import CLI, cli
from ..helpers.server_tools import free_port, metric_total, wait_until

# All traffic stays on loopback: without this, Ray turns "127.0.0.1" in an address into the machine's outward
# address (found by routing towards the internet), which may not reach a node listening on loopback.
LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
os.environ.update(LOOPBACK)
ray = pytest.importorskip("ray")
pytest.importorskip("ray.serve")

pytestmark = pytest.mark.ray

WORKER = "llama_isolate._worker.main"
DEPLOYMENT_NAME = "llama-isolate"  # the model replicas' (the front is llama-isolate-front)


@dataclass
class Deployed:
    url: str
    address: str  # the cluster's
    node_id: str  # the node with the resource
    command: subprocess.Popen[str]  # `llama-isolate serve --ray ...`


def replica_actors() -> list[Any]:
    """The live model replica actors of our application (there is one), as Ray's state API has them."""
    from ray.util.state import list_actors

    alive = list_actors(filters=[("state", "=", "ALIVE")], detail=True)
    return [a for a in alive if (a.class_name or "").endswith(f":{DEPLOYMENT_NAME}")]


def replica_processes() -> list[psutil.Process]:
    return [psutil.Process(a.pid) for a in replica_actors()]


def workers_of(replica: psutil.Process) -> list[psutil.Process]:
    return [p for p in replica.children(recursive=True) if WORKER in " ".join(p.cmdline())]


@pytest.fixture(scope="module")
def deployed() -> Iterator[Deployed]:
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "node_ip_address": "127.0.0.1"})
    node = cluster.add_node(num_cpus=2, resources={"llm": 1}, node_ip_address="127.0.0.1")
    ray.init(address=cluster.address, _node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False)
    port = free_port()
    argv = ["serve", "--ray", cluster.address, "--port", str(port), "--ray-resource", "llm=1", "--ray-cpus", "1"]
    argv += ["--threads", "2", "--parallel", "2", "--ctx", "1024", "--max-queue", "1", "--drain-timeout", "5"]
    command = subprocess.Popen([*CLI, *argv], stderr=subprocess.PIPE, text=True, env={**os.environ, **LOOPBACK})
    url = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            assert command.poll() is None, command.stderr.read() if command.stderr else ""
            try:
                return httpx.get(f"{url}/health", timeout=5).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(up, timeout=240, what="the Serve application to come up")
        yield Deployed(url, cluster.address, node.node_id, command)
    finally:
        if command.poll() is None:
            command.kill()
            command.wait()
        ray.shutdown()
        cluster.shutdown()


def test_an_address_where_no_cluster_answers_fails_at_once_naming_it() -> None:
    port = free_port()  # nothing listens there
    result = cli("serve", "--ray", f"127.0.0.1:{port}", timeout=60)
    assert result.returncode == 1  # not Ray's own minutes of retries
    assert f"no Ray cluster answers at 127.0.0.1:{port}" in result.stderr


def test_the_replica_runs_on_the_node_with_the_resource_and_owns_its_worker(deployed: Deployed) -> None:
    assert [a.node_id for a in replica_actors()] == [deployed.node_id]
    (replica,) = replica_processes()
    assert len(workers_of(replica)) == 1  # the llama.cpp worker is a child process of the Serve replica


def test_streams_embeds_and_refuses_through_the_proxy(deployed: Deployed) -> None:
    client = openai.OpenAI(base_url=f"{deployed.url}/v1", api_key="unused", max_retries=0)
    chunks = list(
        client.chat.completions.create(
            model="any", messages=[{"role": "user", "content": "Name a colour."}], max_tokens=8, stream=True
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    vector = client.embeddings.create(model="any", input="a colour").data[0].embedding
    assert len(vector) == 576  # SmolLM2-135M's width
    with pytest.raises(openai.BadRequestError) as refused:  # the same errors as `serve` without Ray
        client.chat.completions.create(model="any", messages=[], max_tokens=4)
    assert refused.value.body["param"] == "messages"  # type: ignore[index]


def test_a_client_that_disconnects_stops_its_prompt_on_the_replica(deployed: Deployed) -> None:
    url = deployed.url
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    before = metric_total(url, "llama_isolate_tokens_generated_total")
    stream = client.completions.create(model="any", prompt="1, 2, 3, 4, 5, 6, 7,", max_tokens=1000, stream=True)
    for read, _ in enumerate(stream):
        if read == 3:
            break
    assert metric_total(url, "llama_isolate_prompts_running") == 1
    stream.close()  # the client leaves long before its 1000 tokens
    took = wait_until(lambda: metric_total(url, "llama_isolate_prompts_running") == 0, 10, "the prompt to stop")
    assert took < 1.0  # about 60 ms here, with the /metrics round trips
    assert metric_total(url, "llama_isolate_tokens_generated_total") - before < 300


def test_beyond_its_slots_and_queue_the_replica_answers_429_and_health_still_answers(deployed: Deployed) -> None:
    url, done = deployed.url, threading.Event()
    statuses: list[int] = []
    body = {"prompt": "1, 2, 3, 4, 5, 6, 7,", "max_tokens": 1000, "stream": True}

    def client() -> None:
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=120) as response:
            statuses.append(response.status_code)
            if response.status_code == 429:
                assert json.loads(response.read())["error"]["code"] == "queue_full"
            for _ in response.iter_lines():
                if done.is_set():
                    break

    clients = [threading.Thread(target=client) for _ in range(5)]  # 2 slots, a queue of 1: 2 are refused
    for thread in clients:
        thread.start()
    try:
        wait_until(lambda: statuses.count(429) == 2, 60, "two refusals")
        assert metric_total(url, "llama_isolate_prompts_running") == 2
        assert metric_total(url, "llama_isolate_queue_length") == 1
        start = time.monotonic()
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200
        assert time.monotonic() - start < 2  # not queued behind the prompts
    finally:
        done.set()
        for thread in clients:
            thread.join(timeout=120)
    assert sorted(statuses) == [200, 200, 200, 429, 429]
    wait_until(lambda: metric_total(url, "llama_isolate_prompts_running") == 0, 30, "the prompts to stop")


def test_a_second_serve_on_the_same_cluster_is_refused(deployed: Deployed) -> None:
    result = cli("serve", "--ray", deployed.address, "--port", str(free_port()), timeout=120)
    assert result.returncode == 1
    assert "already runs on this cluster" in result.stderr
    assert httpx.get(f"{deployed.url}/health", timeout=10).status_code == 200  # the first one is untouched


def test_a_killed_worker_fails_its_request_and_the_replica_restarts_it(deployed: Deployed) -> None:
    url = deployed.url
    (replica,) = replica_processes()
    (worker,) = workers_of(replica)
    body = {"prompt": "1, 2, 3, 4, 5, 6, 7,", "max_tokens": 1000, "stream": True}
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as response:
        lines = response.iter_lines()
        next(line for line in lines if line.startswith("data:"))
        worker.send_signal(signal.SIGKILL)
        rest = [line for line in lines if line]
    assert "SIGKILL" in rest[-2] and rest[-1] == "data: [DONE]"  # the stream ends with an error, not a hang

    def answers() -> bool:
        chat = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
        return httpx.post(f"{url}/v1/chat/completions", json=chat, timeout=60).status_code == 200

    # A guard, not a speed target: beside two busy processes the new worker took over a minute to load and answer.
    wait_until(answers, timeout=180, what="the replica's new worker to answer")
    assert replica_processes() == [replica]  # the same Serve replica: the crash stayed in its worker
    assert workers_of(replica) != [worker]


def test_sigterm_deletes_the_application_and_its_workers_then_exits_0(deployed: Deployed) -> None:
    from ray import serve

    (replica,) = replica_processes()
    workers = workers_of(replica)
    deployed.command.send_signal(signal.SIGTERM)
    assert deployed.command.wait(timeout=60) == 0
    assert "llama-isolate" not in serve.status().applications
    _, alive = psutil.wait_procs([replica, *workers], timeout=30)
    assert alive == []


def test_sigterm_while_replicas_wait_for_a_node_deletes_the_pending_application(deployed: Deployed) -> None:
    from ray import serve

    assert deployed.command.poll() is not None  # the test before deleted the first application
    argv = ["serve", "--ray", deployed.address, "--port", str(free_port()), "--ray-resource", "nowhere=1"]
    argv += ["--drain-timeout", "1"]  # what Ray gives the replica it could not place, before it gives up on it
    command = subprocess.Popen([*CLI, *argv], stderr=subprocess.DEVNULL, env={**os.environ, **LOOPBACK})
    try:
        wait_until(lambda: "llama-isolate" in serve.status().applications, 60, "the deployment to begin")
        command.send_signal(signal.SIGTERM)  # no node has the resource: it would wait for ever
        assert command.wait(timeout=60) == 0
        assert "llama-isolate" not in serve.status().applications
    finally:
        if command.poll() is None:
            command.kill()
            command.wait()
