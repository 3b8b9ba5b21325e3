"""`llama-isolate serve`: its defaults, its refusals before loading, and a clean stop on SIGTERM."""

from __future__ import annotations

import signal
import subprocess

import httpx
import psutil
import pytest

from ..helpers.cli import CLI, cli
from ..helpers.server_tools import free_port, wait_until


def test_help_names_every_option() -> None:
    result = cli("serve", "--help")
    assert result.returncode == 0
    for option in ("--model", "--mmproj", "--host", "--port", "--parallel", "--ctx", "--threads", "--max-queue",
                   "--api-key", "--cors-origin", "--model-name", "--max-body-bytes", "--body-timeout",
                   "--drain-timeout", "--replicas", "--config", "--chat-template", "--ray", "--max-replicas",
                   "--ray-resource", "--ray-cpus", "--ray-gpus", "--ray-routing", "--trim-history", "--allowed-host",
                   "--speculative", "--speculative-draft", "--speculative-max"):  # fmt: skip
        assert option in result.stdout
    assert "127.0.0.1" in result.stdout  # bound to this machine unless told otherwise


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--parallel", "0"], "--parallel"),
        (["--port", "70000"], "--port"),
        (["--ctx", "8"], "n_ctx"),
        (["--chat-template", "/no/such/template.jinja"], "--chat-template"),
        (["--body-timeout", "0"], "--body-timeout"),
        (["--body-timeout", "nan"], "--body-timeout"),
        (["--drain-timeout", "-1"], "--drain-timeout"),
        (["--speculative", "beam"], "--speculative"),
        (["--speculative", "ngram", "--speculative-max", "0"], "--speculative-max"),
        (["--speculative-max", "8"], "--speculative-max needs"),
        (["--speculative", "ngram", "--speculative-draft", "small.gguf"], "exclude each other"),
    ],
)
def test_bad_options_exit_2_before_loading(args: list[str], message: str) -> None:
    result = cli("serve", *args, timeout=30)
    assert result.returncode == 2
    assert message in result.stderr


@pytest.mark.parametrize(
    ("drain", "max_tokens", "ends"),
    [("60", 40, "finishes"), ("0", 2000, "is cut with an error")],
)
def test_sigterm_drains_running_requests_then_exits_0(drain: str, max_tokens: int, ends: str) -> None:
    port = free_port()
    env = {"LLAMA_ISOLATE_API_KEY": "from-env", "PATH": "/usr/bin:/bin"}
    process = subprocess.Popen(
        [*CLI, "serve", "--port", str(port), "--parallel", "1", "--ctx", "2048", "--drain-timeout", drain],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**env, **{k: v for k, v in __import__("os").environ.items() if k not in env}},
    )
    url = f"http://127.0.0.1:{port}"
    key = {"Authorization": "Bearer from-env"}
    try:

        def up() -> bool:
            try:
                return httpx.get(f"{url}/health", timeout=5).status_code == 200
            except httpx.TransportError:
                assert process.poll() is None, process.stderr.read() if process.stderr else ""
                return False

        wait_until(up, timeout=120, what="the server to start")
        assert httpx.get(f"{url}/v1/models").status_code == 401  # the key came from the environment
        chat = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
        assert httpx.post(f"{url}/v1/chat/completions", json=chat, headers=key, timeout=60).status_code == 200
        workers = psutil.Process(process.pid).children(recursive=True)
        assert workers
        counting = {"prompt": "1, 2, 3, 4, 5, 6, 7,", "max_tokens": max_tokens, "stream": True}
        with httpx.stream("POST", f"{url}/v1/completions", json=counting, headers=key, timeout=60) as running:
            lines = running.iter_lines()
            next(lines)
            process.send_signal(signal.SIGTERM)

            def refused() -> bool:
                try:
                    httpx.get(f"{url}/health", timeout=5)
                except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError):
                    # refused, or (a connection that reached the backlog as the listener closed) closed unanswered,
                    # or reset
                    return True
                return False

            if drain != "0":
                wait_until(refused, timeout=30, what="new connections to be refused while the stream drains")
            rest = [line for line in lines if line]
        assert rest[-1] == "data: [DONE]"
        if ends == "finishes":  # the stream that was running when the server was told to stop ran to its end
            assert '"finish_reason":"length"' in rest[-2].replace(" ", "") or "usage" in rest[-2], rest[-3:]
            assert not any('"error"' in line for line in rest)
        else:  # past the deadline it ends with an error, not cut off
            assert "shutting down" in rest[-2]
        assert process.wait(timeout=30) == 0
        _, alive = psutil.wait_procs(workers, timeout=10)
        assert alive == []
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_serve_checks_host_names_and_trims_history_when_told() -> None:
    port = free_port()
    argv = ["serve", "--port", str(port), "--parallel", "1", "--ctx", "256", "--allowed-host", "*.example.test"]
    process = subprocess.Popen([*CLI, *argv, "--trim-history"], stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            assert process.poll() is None
            try:
                return httpx.get(f"{url}/health", timeout=5).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(up, timeout=120, what="the server to start")
        assert httpx.get(f"{url}/health", headers={"host": f"localhost:{port}"}).status_code == 200
        assert httpx.get(f"{url}/health", headers={"host": "llm.example.test"}).status_code == 200
        assert httpx.get(f"{url}/health", headers={"host": "attacker.example"}).status_code == 403
        history = []
        for i in range(12):
            history += [{"role": "user", "content": f"Fact {i}: box {i} holds {i * 7} blue marbles."}]
            history += [{"role": "assistant", "content": "Noted."}]
        chat = {"messages": [*history, {"role": "user", "content": "Box 3?"}], "max_tokens": 2}
        answer = httpx.post(f"{url}/v1/chat/completions", json=chat, timeout=60)
        assert answer.status_code == 200 and answer.json()["usage"]["dropped_messages"] > 0
    finally:
        process.terminate()
        process.wait(timeout=60)
