"""`llama-isolate serve`: its defaults, its refusals before loading, and a clean stop on SIGTERM."""

from __future__ import annotations

import signal
import socket
import subprocess

import httpx
import psutil
import pytest

from .server_tools import wait_until
from .test_cli import CLI, cli


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_help_names_every_option() -> None:
    result = cli("serve", "--help")
    assert result.returncode == 0
    for option in ("--model", "--mmproj", "--host", "--port", "--parallel", "--ctx", "--threads", "--max-queue",
                   "--api-key", "--cors-origin", "--model-name", "--max-body-bytes", "--body-timeout",
                   "--chat-template"):  # fmt: skip
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
    ],
)
def test_bad_options_exit_2_before_loading(args: list[str], message: str) -> None:
    result = cli("serve", *args, timeout=30)
    assert result.returncode == 2
    assert message in result.stderr


def test_serves_then_stops_cleanly_on_sigterm() -> None:
    port = free_port()
    env = {"LLAMA_ISOLATE_API_KEY": "from-env", "PATH": "/usr/bin:/bin"}
    process = subprocess.Popen(
        [*CLI, "serve", "--port", str(port), "--parallel", "1", "--ctx", "512"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**env, **{k: v for k, v in __import__("os").environ.items() if k not in env}},
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            try:
                return httpx.get(f"{url}/health", timeout=5).status_code == 200
            except httpx.TransportError:
                assert process.poll() is None, process.stderr.read() if process.stderr else ""
                return False

        wait_until(up, timeout=120, what="the server to start")
        assert httpx.get(f"{url}/v1/models").status_code == 401  # the key came from the environment
        answer = httpx.post(
            f"{url}/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2},
            headers={"Authorization": "Bearer from-env"},
            timeout=60,
        )
        assert answer.status_code == 200
        workers = psutil.Process(process.pid).children(recursive=True)
        assert workers
        counting = {"prompt": "1, 2, 3, 4, 5, 6, 7,", "max_tokens": 400, "stream": True}
        with httpx.stream(
            "POST", f"{url}/v1/completions", json=counting, headers={"Authorization": "Bearer from-env"}, timeout=60
        ) as running:
            lines = running.iter_lines()
            next(lines)
            process.send_signal(signal.SIGTERM)
            rest = [line for line in lines if line]
        # The stream running when the server was told to stop ends with an error, not cut off.
        assert rest[-1] == "data: [DONE]"
        assert "shutting down" in rest[-2]
        assert process.wait(timeout=10) == 0
        _, alive = psutil.wait_procs(workers, timeout=10)
        assert alive == []
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
