"""Bounded, truthful answers over HTTP: whatever a request holds, it gets a clear 4xx or its answer, and the
server keeps answering everyone else."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from llama_isolate import ContextParams, LlamaLoad, SamplerParams
from llama_isolate.server import create_app
from llama_isolate.server.middleware import LOOPBACK_HOSTS, MAX_BODY_COMMAS, SECURITY_HEADERS

from ..helpers.server_tools import error_of, wait_until
from ..helpers.serving import serving

CHAT = "/v1/chat/completions"
REQUESTS = 'llama_isolate_requests_total{endpoint="/v1/chat/completions"'


def load(model_path: Path, n_ctx: int = 512) -> LlamaLoad:
    return LlamaLoad(
        path=model_path,
        context_params=ContextParams(n_ctx=n_ctx, n_parallel=2, embeddings=True),
        sampler_params=SamplerParams(greedy=True),
    )


@pytest.fixture(scope="module")
def base_url(model_path: Path) -> Iterator[str]:
    with serving(create_app(load(model_path), model_name="smol", allowed_hosts=LOOPBACK_HOSTS)) as url:
        yield url


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def long_chat(turns: int = 12) -> list[dict[str, str]]:
    history: list[dict[str, str]] = []
    for i in range(turns):
        history += ask(f"Fact {i}: box {i} holds {i * 7} blue marbles and {i * 3} red ones, said the clerk.")
        history += [{"role": "assistant", "content": "Noted, I will remember that."}]
    return history + ask("How many blue marbles are in box 3?")


# ------------------------------------------------------------------ a chat longer than the context


def test_a_chat_over_the_context_is_400_unless_trimming_is_asked(base_url: str) -> None:
    refused = httpx.post(base_url + CHAT, json={"messages": long_chat(), "max_tokens": 8}, timeout=60)
    assert refused.status_code == 400
    error = error_of(refused)
    assert error["code"] == "context_length_exceeded" and error["param"] == "messages"
    assert "--ctx" in str(error["message"]) and "trim_history" in str(error["message"])
    assert "ContextParams" not in str(error["message"]).split("(")[0]  # the counts come first, in the user's words
    trimmed = httpx.post(
        base_url + CHAT, json={"messages": long_chat(), "max_tokens": 8, "trim_history": True}, timeout=60
    )
    assert trimmed.status_code == 200, trimmed.text
    assert trimmed.json()["usage"]["dropped_messages"] > 0  # it says so
    short = httpx.post(base_url + CHAT, json={"messages": ask("Hi"), "max_tokens": 3, "trim_history": True})
    assert "dropped_messages" not in short.json()["usage"]


def test_the_server_option_trims_and_a_request_can_still_refuse_it(model_path: Path) -> None:
    with serving(create_app(load(model_path), trim_history=True)) as url:
        trimmed = httpx.post(url + CHAT, json={"messages": long_chat(), "max_tokens": 8}, timeout=60)
        assert trimmed.status_code == 200 and trimmed.json()["usage"]["dropped_messages"] > 0
        strict = httpx.post(
            url + CHAT, json={"messages": long_chat(), "max_tokens": 8, "trim_history": False}, timeout=60
        )
        assert strict.status_code == 400 and error_of(strict)["code"] == "context_length_exceeded"


def test_20000_messages_are_refused_by_count_before_they_are_rendered(base_url: str) -> None:
    crowd = [{"role": ("user", "assistant")[i % 2], "content": "m"} for i in range(20_000)] + ask("last")
    response = httpx.post(base_url + CHAT, json={"messages": crowd, "max_tokens": 2}, timeout=120)
    error = error_of(response)
    assert response.status_code == 400 and error["code"] == "context_length_exceeded", error
    assert "20001 messages" in str(error["message"]) and "at most 4096" in str(error["message"])
    assert httpx.get(base_url + "/health").status_code == 200


# ------------------------------------------------------------------ bodies parsed on the event loop


def test_a_body_of_too_many_values_is_413_and_health_answers_meanwhile(base_url: str) -> None:
    bias = {str(i): 1 for i in range(2_000_000)}
    body = json.dumps({"messages": ask("Hi"), "logit_bias": bias}).encode()
    gaps: list[float] = []
    done = threading.Event()

    def probe() -> None:
        with httpx.Client(timeout=30) as client:
            while not done.is_set():
                started = time.monotonic()
                assert client.get(base_url + "/health").status_code == 200
                gaps.append(time.monotonic() - started)

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        response = httpx.post(base_url + CHAT, content=body, headers={"content-type": "application/json"}, timeout=60)
    finally:
        done.set()
        prober.join()
    assert response.status_code == 413
    error = error_of(response)
    assert error["code"] == "request_too_large" and str(MAX_BODY_COMMAS) in str(error["message"])
    assert gaps and max(gaps) < 1.0, f"/health waited {max(gaps):.2f} s while the body was read"


# ------------------------------------------------------------------ lone surrogates, anywhere


SURROGATE = "\\ud800"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": f"m{SURROGATE}"}, "model"),
        ({"stop": SURROGATE}, "stop"),
        ({"logit_bias": {SURROGATE: 1}}, "logit_bias"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "object", SURROGATE: 1}}}},
            "response_format.json_schema.schema",
        ),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"schema": {"type": "object", "properties": {SURROGATE: {"type": "string"}}}},
                }
            },
            "response_format.json_schema.schema.properties",
        ),
        (
            {
                "tool_choice": "required",
                "tools": [
                    {"type": "function", "function": {"name": "f", "parameters": {"enum": [SURROGATE]}}},
                ],
            },
            "tools[0].function.parameters.enum[0]",
        ),
    ],
)
def test_a_lone_surrogate_anywhere_is_400_and_the_connection_serves_on(
    base_url: str, body: dict[str, object], param: str
) -> None:
    raw = json.dumps({"messages": ask("Hi"), "max_tokens": 2, **body}).replace("\\\\ud800", "\\ud800")
    with httpx.Client(timeout=60) as client:  # one connection: the next request must not be reset
        response = client.post(base_url + CHAT, content=raw.encode(), headers={"content-type": "application/json"})
        assert response.status_code == 400, response.text
        assert response.headers["content-type"].startswith("application/json")
        error = error_of(response)
        assert str(error["param"]).startswith(param) and "lone surrogate" in str(error["message"])
        assert client.get(base_url + "/health").status_code == 200


# ------------------------------------------------------------------ what real clients send


def test_models_retrieve_finds_the_model_and_404s_others(base_url: str) -> None:
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)
    assert client.models.retrieve("smol").id == "smol"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")
    response = httpx.get(f"{base_url}/v1/models/{'x' * 20_000}")
    error = error_of(response)
    assert response.status_code == 404 and error["code"] == "model_not_found"
    assert len(str(error["message"])) < 300  # a long name is not echoed back whole


@pytest.mark.parametrize(("path", "field"), [("/v1/completions", "prompt"), ("/v1/embeddings", "input")])
@pytest.mark.parametrize("ids", [[1, 2, 3], [[1, 2, 3]]])
def test_token_ids_as_input_are_refused_by_name(base_url: str, path: str, field: str, ids: object) -> None:
    response = httpx.post(base_url + path, json={field: ids, "max_tokens": 2})
    assert response.status_code == 400
    error = error_of(response)
    assert error["param"] == field and error["code"] == "unsupported_value"
    assert "token ids" in str(error["message"])


@pytest.mark.parametrize(("path", "field"), [("/v1/completions", "prompt"), ("/v1/embeddings", "input")])
@pytest.mark.parametrize("empty", [[], [[]], [""]])
def test_an_empty_prompt_or_input_is_a_400_naming_it(base_url: str, path: str, field: str, empty: object) -> None:
    response = httpx.post(base_url + path, json={field: empty, "max_tokens": 2})  # {"prompt": []} was a 500
    assert response.status_code == 400, response.text
    assert str(error_of(response)["param"]).startswith(field)
    assert httpx.get(base_url + "/health").status_code == 200


def test_every_error_has_a_code(base_url: str) -> None:
    answers = [
        httpx.get(base_url + "/v1/nothing"),
        httpx.get(base_url + CHAT),
        httpx.post(base_url + CHAT, json={"messages": ask("Hi"), "tool_choice": "auto"}),
        httpx.post(base_url + "/v1/completions", json={"prompt": "Hi", "echo": True}),
        httpx.post(base_url + "/v1/completions", json={"prompt": ""}),
    ]
    assert [a.status_code for a in answers] == [404, 405, 400, 400, 400]
    for answer in answers:
        error_of(answer)  # asserts the code


# ------------------------------------------------------------------ security


def test_a_host_name_that_is_not_this_machines_is_403(base_url: str) -> None:
    port = base_url.rsplit(":", 1)[1]
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", f"app.localhost:{port}"):
        assert httpx.get(base_url + "/health", headers={"host": host}).status_code == 200, host
    rebound = httpx.get(base_url + "/v1/models", headers={"host": f"attacker.example:{port}"})
    assert rebound.status_code == 403
    assert error_of(rebound)["code"] == "host_not_allowed"


def test_an_allowed_host_is_served(model_path: Path) -> None:
    with serving(create_app(load(model_path), allowed_hosts=[*LOOPBACK_HOSTS, "*.example.test"])) as url:
        assert httpx.get(url + "/health", headers={"host": "llm.example.test"}).status_code == 200
        assert httpx.get(url + "/health", headers={"host": "example.test.evil"}).status_code == 403


def test_the_page_and_the_api_carry_the_security_headers(base_url: str) -> None:
    for path in ("/", "/v1/models", "/static/js/chat.js"):
        headers = httpx.get(base_url + path).headers
        for name, value in SECURITY_HEADERS:
            assert headers[name.decode()] == value.decode(), (path, name)
    assert "frame-ancestors 'none'" in httpx.get(base_url + "/").headers["content-security-policy"]


# ------------------------------------------------------------------ connections


def test_pipelined_requests_from_a_client_that_leaves_log_no_traceback(
    base_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    body = json.dumps({"messages": ask("Hi"), "max_tokens": 16}).encode()
    streamed = json.dumps({"messages": ask("Hi"), "max_tokens": 16, "stream": True}).encode()
    host, port = base_url.removeprefix("http://").split(":")

    def request(data: bytes) -> bytes:
        head = f"POST {CHAT} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        return head.encode() + f"Content-Length: {len(data)}\r\n\r\n".encode() + data

    def answered() -> float:
        text = httpx.get(base_url + "/metrics").text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(REQUESTS))

    with caplog.at_level(logging.ERROR):
        # Each client leaves once its first answer begins to arrive. A whole answer lets the second request start
        # (it is then answered to nobody); a stream is cut while it runs. The requests still queued behind never
        # start once the client has gone: so 2, 1 and 2 requests end, each to a closed connection but the first.
        cases = ((request(body) * 3, 2), (request(streamed) * 3, 1), (request(body) + request(streamed), 2))
        for payload, ending in cases:
            target = answered() + ending
            with socket.create_connection((host, int(port))) as connection:
                connection.sendall(payload)
                connection.recv(1)
            wait_until(lambda target=target: answered() >= target, what="the requests that started to end")
        assert httpx.post(base_url + CHAT, json={"messages": ask("Hi"), "max_tokens": 2}).status_code == 200
    assert not [r for r in caplog.records if r.exc_info or "Exception" in r.getMessage()], caplog.text
