"""Several models and replicas behind one server: routing by name, by cache, by load; a replica's crash."""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fastapi import FastAPI

from llama_isolate import ContextParams, LlamaLoad, SamplerParams
from llama_isolate._cli import commands as _cli
from llama_isolate._cli import serve as _serve_cli
from llama_isolate.server import ServedModel, create_app

from ..helpers.server_tools import metric, wait_until
from ..helpers.serving import serving

CHAT = "/v1/chat/completions"
REPLICA = "x-llama-isolate-replica"
# Long enough (~200 tokens) that the replica holding it beats the others by more than the affinity margin.
STORY = " ".join(f"On day {i} the keeper of the lighthouse counted {i * 7} gulls and {i % 5} ships." for i in range(14))


def load(path: Path, n_parallel: int = 2) -> LlamaLoad:
    return LlamaLoad(
        path=path,
        context_params=ContextParams(n_ctx=1024, n_parallel=n_parallel, embeddings=True),
        sampler_params=SamplerParams(greedy=True),
    )


@pytest.fixture(scope="module")
def app(model_path: Path, gemma_path: Path) -> FastAPI:
    return create_app(
        models=[ServedModel("smol", load(model_path), replicas=2), ServedModel("gemma", load(gemma_path, 1))]
    )


@pytest.fixture(scope="module")
def base_url(app: FastAPI) -> Iterator[str]:
    with serving(app) as url:
        yield url


def chat(base_url: str, messages: list[dict[str, Any]], model: str = "smol", **extra: Any) -> httpx.Response:
    body = {"model": model, "messages": messages, "max_tokens": 4, **extra}
    return httpx.post(base_url + CHAT, json=body, timeout=120)


def test_models_are_listed_and_picked_by_name(base_url: str) -> None:
    listed = httpx.get(base_url + "/v1/models").json()
    assert [m["id"] for m in listed["data"]] == ["smol", "gemma"]
    answer = chat(base_url, [{"role": "user", "content": "Hi"}], model="gemma")
    assert answer.status_code == 200 and answer.headers[REPLICA] == "gemma/0"
    assert answer.json()["model"] == "gemma"
    embedded = httpx.post(base_url + "/v1/embeddings", json={"model": "gemma", "input": "hi"}, timeout=60).json()
    smol = httpx.post(base_url + "/v1/embeddings", json={"model": "smol", "input": "hi"}, timeout=60).json()
    assert len(embedded["data"][0]["embedding"]) != len(smol["data"][0]["embedding"])  # two different models


def test_an_unknown_model_is_404_naming_the_known_ones(base_url: str) -> None:
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Hi"}])
    error = caught.value.body
    assert isinstance(error, dict) and error["code"] == "model_not_found" and error["param"] == "model"
    assert "smol" in error["message"] and "gemma" in error["message"]
    body = {"model": "m" * 2**20, "messages": [{"role": "user", "content": "Hi"}]}
    huge = httpx.post(base_url + "/v1/chat/completions", json=body, timeout=60)
    assert huge.status_code == 404 and len(huge.text) < 1000  # a megabyte name is not echoed back whole


def test_the_next_turn_goes_where_the_conversation_left_its_cache(base_url: str) -> None:
    for story in (STORY, STORY.replace("gulls", "crabs")):  # two conversations, wherever each starts
        first_turn = [{"role": "user", "content": f"{story} How many gulls in all?"}]
        first = chat(base_url, first_turn)
        where = first.headers[REPLICA]
        reply = first.json()["choices"][0]["message"]["content"]
        history = [*first_turn, {"role": "assistant", "content": reply}, {"role": "user", "content": "And ships?"}]
        for _ in range(3):
            after = chat(base_url, history)
            assert after.headers[REPLICA] == where
            assert after.json()["usage"]["prompt_tokens_details"]["cached_tokens"] > 150


def test_new_conversations_go_to_the_least_loaded_replica(base_url: str) -> None:
    long = {"model": "smol", "messages": [{"role": "user", "content": "Count to a thousand."}], "max_tokens": 400}
    with httpx.stream("POST", base_url + CHAT, json={**long, "stream": True}, timeout=120) as busy:
        lines = busy.iter_lines()
        next(lines)  # it runs
        taken = busy.headers[REPLICA]
        for question in ("What is bread?", "Why is the sky blue?"):
            other = chat(base_url, [{"role": "user", "content": question}])
            assert other.headers[REPLICA] != taken  # the other replica had nothing outstanding


def test_a_replica_killed_under_load_fails_only_its_own_streams(app: FastAPI, base_url: str) -> None:
    long = {"model": "smol", "messages": [{"role": "user", "content": "Count to a thousand."}], "max_tokens": 300}
    outcomes: dict[str, tuple[bool, str]] = {}
    started = threading.Barrier(3)

    def stream(tag: str) -> None:
        done, error = False, ""
        with httpx.stream("POST", base_url + CHAT, json={**long, "stream": True}, timeout=120) as response:
            replica = response.headers[REPLICA]
            first = True
            for line in response.iter_lines():
                if first:
                    first = False
                    started.wait(timeout=60)
                if line == "data: [DONE]":
                    done = True
                elif line.startswith("data: ") and '"error"' in line:
                    error = json.loads(line[6:])["error"]["message"]
        outcomes[tag] = (done, error)
        outcomes[tag + "-replica"] = (True, replica)

    threads = [threading.Thread(target=stream, args=(tag,)) for tag in ("a", "b")]
    for thread in threads:
        thread.start()
    started.wait(timeout=60)  # both stream, one on each replica (the second went to the one with less to do)
    pool = app.state.pool
    victim = pool.models["smol"][1].ready().worker_pid
    assert victim is not None
    os.kill(victim, signal.SIGKILL)
    for thread in threads:
        thread.join(timeout=120)
        assert not thread.is_alive()  # no stream hangs
    replicas = {tag: outcomes[tag + "-replica"][1] for tag in ("a", "b")}
    assert sorted(replicas.values()) == ["smol/0", "smol/1"]
    for tag, replica in replicas.items():
        done, error = outcomes[tag]
        if replica == "smol/1":
            assert error and "SIGKILL" in error, outcomes  # ended with an error chunk naming the crash
        else:
            assert done and not error, outcomes  # the other replica's stream finished untouched
    # the server keeps answering: the killed replica comes back, the other served meanwhile
    assert chat(base_url, [{"role": "user", "content": "Hi"}]).status_code == 200
    wait_until(lambda: metric(base_url, "llama_isolate_replica_up", model="smol", replica="1") == 1, 120, "a restart")
    health = httpx.get(base_url + "/health").json()
    assert health["status"] == "ok" and health["models"]["smol"] == ["ready", "ready"]


def test_metrics_show_every_replica_and_the_totals(base_url: str) -> None:
    assert chat(base_url, [{"role": "user", "content": "Hi"}], model="gemma").status_code == 200
    for model, replica in (("smol", "0"), ("smol", "1"), ("gemma", "0")):
        assert metric(base_url, "llama_isolate_replica_up", model=model, replica=replica) == 1
    assert metric(base_url, "llama_isolate_replica_tokens_generated_total", model="gemma", replica="0") > 0
    total = metric(base_url, "llama_isolate_tokens_generated_total")
    parts = [
        metric(base_url, "llama_isolate_replica_tokens_generated_total", model=m, replica=r)
        for m, r in (("smol", "0"), ("smol", "1"), ("gemma", "0"))
    ]
    assert total == sum(parts) > 0


def serve_args(*argv: str) -> Any:
    return _cli._parser().parse_args(["serve", *argv])


def test_the_command_line_names_models_and_replicas(tmp_path: Path) -> None:
    plans = _serve_cli.describe(
        serve_args("--model", "a=/m/a.gguf", "--model", "b=/m/b.gguf", "--replicas", "2")
    ).models
    assert [(p.name, p.load.path, p.replicas) for p in plans] == [("a", "/m/a.gguf", 2), ("b", "/m/b.gguf", 2)]
    (one,) = _serve_cli.describe(serve_args("--model", "./odd=name.gguf")).models  # a path with '=' stays a path
    assert (one.name, one.load.path) == (None, "./odd=name.gguf")
    config = tmp_path / "serve.toml"
    config.write_text(
        '[models.chat]\npath = "/m/chat.gguf"\nreplicas = 2\nctx = 512\n\n[models.embed]\npath = "/m/e.gguf"\n'
    )
    chat_plan, embed_plan = _serve_cli.describe(serve_args("--config", str(config))).models
    assert (chat_plan.name, chat_plan.replicas, chat_plan.load.context_params.n_ctx) == ("chat", 2, 512)
    assert (embed_plan.name, embed_plan.replicas) == ("embed", 1)


def test_ray_options_describe_serve_replicas_and_their_resources(tmp_path: Path) -> None:
    argv = ["--ray", "auto", "--replicas", "2", "--max-replicas", "4", "--ray-resource", "llm=1", "--ray-cpus", "3"]
    plan = _serve_cli.describe(serve_args(*argv))
    assert plan.ray == _serve_cli.RayPlan("auto", 2, 4, {"llm": 1.0}, 3.0, 0.0)
    (model,) = plan.models
    assert model.replicas == 1  # --replicas counted Serve replicas, each with one worker of the model
    assert model.load.context_params.n_threads == 3  # the replica's CPUs, not this machine's
    assert _serve_cli.describe(serve_args("--model", "/x.gguf")).ray is None
    config = tmp_path / "serve.toml"
    config.write_text(
        '[models.chat]\npath = "/m/chat.gguf"\nreplicas = 2\n\n'
        "[ray]\nmin_replicas = 1\nmax_replicas = 3\nnum_cpus = 8\nnum_gpus = 1\nresources = { node_a = 0.5 }\n"
        'routing = "default"\n'
    )
    plan = _serve_cli.describe(
        serve_args("--config", str(config), "--ray", "ray://head:10001", "--ray-resource", "x=2")
    )
    assert plan.ray == _serve_cli.RayPlan("ray://head:10001", 1, 3, {"x": 2.0, "node_a": 0.5}, 8.0, 1.0, "default")
    assert _serve_cli.describe(serve_args("--ray", "auto", "--ray-routing", "default")).ray.routing == "default"
    (chat,) = plan.models
    assert (chat.replicas, chat.load.context_params.n_threads) == (2, 8)  # two workers in each Serve replica


@pytest.mark.parametrize(
    ("argv", "toml", "words"),
    [
        (["--model", "a=/x.gguf", "--model", "/y.gguf"], None, "distinct NAME=PATH"),
        (["--model", "a=/x.gguf", "--model", "a=/y.gguf"], None, "distinct NAME=PATH"),
        (["--model", "=/x.gguf"], None, "NAME=PATH"),
        (["--replicas", "0"], None, "--replicas"),
        ([], "[models.chat]\nreplicas = 2\n", "needs a path"),
        ([], '[models.chat]\npath = "/x"\nparallel = "four"\n', "parallel must be"),
        ([], '[models.chat]\npath = "/x"\ncolour = 1\n', "unknown keys"),
        ([], "not toml [", "cannot be read"),
        ([], "[other]\n", r"no \[models.NAME\]"),
        (["--model", "/x.gguf"], '[models.chat]\npath = "/x"\n', "give no --model"),
        (["--max-replicas", "2"], None, "for --ray"),
        (["--ray-cpus", "2"], None, "for --ray"),
        (["--ray-routing", "prefix"], None, "for --ray"),
        (["--ray", "auto"], '[models.chat]\npath = "/x"\n[ray]\nrouting = "random"\n', "routing must be"),
        ([], '[models.chat]\npath = "/x"\n[ray]\nmax_replicas = 2\n', "for --ray"),
        (["--ray", "auto", "--replicas", "3", "--max-replicas", "2"], None, "below --replicas"),
        (["--ray", "auto", "--replicas", "0"], None, "min_replicas"),
        (["--ray", "auto", "--ray-resource", "llm"], None, "NAME=AMOUNT"),
        (["--ray", "auto", "--ray-resource", "llm=0"], None, "amount > 0"),
        (["--ray", "auto", "--ray-cpus", "-1"], None, "--ray-cpus"),
        (["--ray", "auto"], '[models.chat]\npath = "/x"\n[ray]\ncolour = 1\n', "unknown keys"),
        (["--ray", "auto"], '[models.chat]\npath = "/x"\n[ray]\nresources = 1\n', "resources must be"),
        (["--ray", "auto"], '[models.chat]\npath = "/x"\n[ray]\nmax_replicas = "many"\n', "max_replicas"),
        (["--ray", "auto"], '[models.chat]\npath = "/x"\n[ray]\nmin_replicas = "few"\n', "min_replicas"),
    ],
)
def test_bad_model_options_are_refused_naming_what(
    tmp_path: Path, argv: list[str], toml: str | None, words: str
) -> None:
    if toml is not None:
        (tmp_path / "serve.toml").write_text(toml)
        argv = [*argv, "--config", str(tmp_path / "serve.toml")]
    with pytest.raises(ValueError, match=words):
        _serve_cli.describe(serve_args(*argv))
