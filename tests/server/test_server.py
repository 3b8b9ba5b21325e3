"""The OpenAI-compatible server, through the real `openai` SDK and raw HTTP, on the default model."""

from __future__ import annotations

import base64
import json
import math
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import jsonschema
import openai
import pydantic
import pytest

from llama_isolate.server import create_app

from ..helpers.server_tools import CHAT, COMPLETIONS, COUNTING, ask, error_of, metric, server_load, wait_until
from ..helpers.serving import serving


@pytest.fixture(scope="module")
def base_url(model_path: Path) -> Iterator[str]:
    with serving(create_app(server_load(model_path), model_name="smol")) as url:
        yield url


@pytest.fixture
def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)


# ------------------------------------------------------------------ the happy paths


def test_models_lists_the_one_model(client: openai.OpenAI) -> None:
    listed = client.models.list().data
    assert [m.id for m in listed] == ["smol"]
    assert listed[0].model_extra == {"input_modalities": ["text"]}  # no mmproj: text only (what the chat page reads)


def test_chat_answer_with_usage(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(model="gpt-4o", messages=ask("Name a fruit."), max_tokens=6)
    assert answer.id.startswith("chatcmpl-")
    assert answer.model == "smol"  # any model name is accepted: there is one
    choice = answer.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason == "length"
    assert answer.usage is not None
    assert answer.usage.completion_tokens == 6
    assert answer.usage.prompt_tokens > 10
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + 6
    assert answer.usage.prompt_tokens_details is not None
    assert answer.usage.prompt_tokens_details.cached_tokens is not None


def test_streaming_chunks_look_as_the_sdk_expects(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(model="m", messages=ask("Describe rain."), max_tokens=12)
    chunks = list(
        client.chat.completions.create(
            model="m",
            messages=ask("Describe rain."),
            max_tokens=12,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert len({c.id for c in chunks}) == 1 and len({c.created for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.choices[0].delta.role is None for c in chunks[1:-1])
    *content, last_choice, usage_chunk = chunks
    assert last_choice.choices[0].finish_reason == "length" and not last_choice.choices[0].delta.content
    assert all(c.choices[0].finish_reason is None for c in content)
    assert usage_chunk.choices == [] and usage_chunk.usage is not None
    assert usage_chunk.usage.completion_tokens == 12
    assert "".join(c.choices[0].delta.content or "" for c in content) == whole.choices[0].message.content


def test_without_include_usage_the_stream_has_no_usage_chunk(base_url: str) -> None:
    body = {"messages": ask("Hi"), "max_tokens": 3, "stream": True}
    with httpx.stream("POST", base_url + CHAT, json=body, timeout=60) as response:
        lines = [line for line in response.iter_lines() if line]
    assert response.headers["content-type"].startswith("text/event-stream")
    assert lines[-1] == "data: [DONE]"
    assert '"usage"' not in "".join(lines)


def test_stop_sequences_end_the_answer_before_them_streamed_or_not(client: openai.OpenAI) -> None:
    full = client.chat.completions.create(model="m", messages=ask("Count from one to ten in words."), max_tokens=40)
    text = full.choices[0].message.content or ""
    stop = text[len(text) // 2 :][:4]
    assert stop.strip(), text
    cut = client.chat.completions.create(
        model="m", messages=ask("Count from one to ten in words."), max_tokens=40, stop=[stop, "never-there"]
    )
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].message.content == text[: text.index(stop)]
    streamed = client.chat.completions.create(
        model="m", messages=ask("Count from one to ten in words."), max_tokens=40, stop=stop, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == text[: text.index(stop)]


def test_text_completions_continue_the_prompt_as_written(client: openai.OpenAI) -> None:
    answer = client.completions.create(model="m", prompt="The capital of France is", max_tokens=4)
    assert answer.object == "text_completion"
    assert "Paris" in answer.choices[0].text
    assert answer.usage is not None and answer.usage.prompt_tokens < 10  # no chat template around it
    streamed = client.completions.create(model="m", prompt="The capital of France is", max_tokens=4, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == answer.choices[0].text


def test_embeddings_float_and_base64_agree(client: openai.OpenAI, base_url: str) -> None:
    sdk = client.embeddings.create(model="m", input=["a cat", "a dog"])  # the SDK asks for base64
    assert [d.index for d in sdk.data] == [0, 1]
    assert sdk.usage.prompt_tokens == sdk.usage.total_tokens >= 4  # each text and its BOS
    assert all(len(d.embedding) == 576 for d in sdk.data)
    assert math.isclose(sum(x * x for x in sdk.data[0].embedding), 1.0, rel_tol=1e-3)
    raw = httpx.post(f"{base_url}/v1/embeddings", json={"input": "a cat"}, timeout=60).json()
    floats = raw["data"][0]["embedding"]
    b64 = httpx.post(
        f"{base_url}/v1/embeddings", json={"input": "a cat", "encoding_format": "base64"}, timeout=60
    ).json()["data"][0]["embedding"]
    decoded = struct.unpack("<576f", base64.b64decode(b64))
    assert all(math.isclose(x, y, rel_tol=1e-5, abs_tol=1e-7) for x, y in zip(floats, decoded, strict=True))
    assert all(
        math.isclose(x, y, rel_tol=1e-5, abs_tol=1e-7) for x, y in zip(floats, sdk.data[0].embedding, strict=True)
    )


def test_the_next_turn_of_a_conversation_reuses_the_cache(client: openai.OpenAI) -> None:
    messages = [{"role": "system", "content": "You are terse."}, *ask("Tell me about otters.")]
    first = client.chat.completions.create(model="m", messages=messages, max_tokens=16)  # type: ignore[arg-type]
    assert first.usage is not None
    messages += [{"role": "assistant", "content": first.choices[0].message.content or ""}, *ask("Where do they live?")]
    second = client.chat.completions.create(model="m", messages=messages, max_tokens=4)  # type: ignore[arg-type]
    assert second.usage is not None and second.usage.prompt_tokens_details is not None
    cached = second.usage.prompt_tokens_details.cached_tokens or 0
    assert cached >= first.usage.prompt_tokens + first.usage.completion_tokens - 4


def test_concurrent_clients_each_get_their_own_answer(client: openai.OpenAI) -> None:
    prompts = ["Name a colour.", "Name a fruit.", "Name an animal.", "Name a city."]
    alone = [client.chat.completions.create(model="m", messages=ask(p), max_tokens=8) for p in prompts]
    results: dict[int, str] = {}

    def run(i: int) -> None:
        stream = client.chat.completions.create(model="m", messages=ask(prompts[i]), max_tokens=8, stream=True)
        results[i] = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert [results.get(i) for i in range(len(prompts))] == [a.choices[0].message.content for a in alone]


# ------------------------------------------------------------------ structured output


def schema_format(schema: dict[str, object]) -> dict[str, object]:
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}}


PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


@pytest.mark.parametrize("stream", [False, True])
def test_response_format_json_schema_replies_validate(client: openai.OpenAI, stream: bool) -> None:
    asked = {"model": "any", "messages": ask("Invent a person."), "response_format": schema_format(PERSON)}
    if stream:
        text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(**asked, stream=True))
    else:
        answer = client.chat.completions.create(**asked)
        assert answer.choices[0].finish_reason == "stop"
        text = answer.choices[0].message.content or ""
    jsonschema.validate(json.loads(text), PERSON)


class City(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=16)
    population: int
    coastal: bool


def test_the_sdks_parse_with_a_pydantic_model(client: openai.OpenAI) -> None:
    answer = client.chat.completions.parse(model="any", messages=ask("Describe a city."), response_format=City)
    city = answer.choices[0].message.parsed
    assert isinstance(city, City)


def test_response_format_json_object_replies_an_object(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(
        model="any", messages=ask("A JSON object, please."), response_format={"type": "json_object"}, max_tokens=60
    )
    choice = answer.choices[0]
    if choice.finish_reason == "stop":
        assert isinstance(json.loads(choice.message.content or ""), dict)
    else:  # cut by max_tokens: the text is incomplete, but an object's start
        assert choice.finish_reason == "length" and (choice.message.content or "").lstrip().startswith("{")


def test_a_schema_that_cannot_be_enforced_is_400_naming_why(base_url: str) -> None:
    body = {"messages": ask("hi"), "response_format": schema_format({"type": "string", "format": "email"})}
    response = httpx.post(base_url + CHAT, json=body, timeout=30)
    assert response.status_code == 400
    error = error_of(response)
    assert error["param"] == "response_format" and error["code"] == "invalid_schema"
    assert "format 'email' is not supported" in str(error["message"])


def test_logit_bias_forces_a_token(client: openai.OpenAI, model_path: Path) -> None:
    from llama_cpp import Llama

    banana = Llama(str(model_path), vocab_only=True, verbose=False).tokenize(b" banana", add_bos=False)
    assert len(banana) == 1
    answer = client.chat.completions.create(
        model="any", messages=ask("Name a fruit."), max_tokens=3, logit_bias={str(banana[0]): 100}
    )
    assert answer.choices[0].message.content == " banana" * 3


@pytest.mark.parametrize("stream", [False, True])
def test_chat_logprobs_tokens_join_back_to_the_content(client: openai.OpenAI, stream: bool) -> None:
    asked = {"model": "any", "messages": ask("Name a colour."), "max_tokens": 8, "logprobs": True, "top_logprobs": 2}
    if stream:
        chunks = [c for c in client.chat.completions.create(**asked, stream=True) if c.choices]
        content = "".join(c.choices[0].delta.content or "" for c in chunks)
        entries = [e for c in chunks if c.choices[0].logprobs for e in c.choices[0].logprobs.content or []]
    else:
        choice = client.chat.completions.create(**asked).choices[0]
        content = choice.message.content or ""
        assert choice.logprobs is not None
        entries = choice.logprobs.content or []
    assert content and "".join(e.token for e in entries) == content
    for entry in entries:
        assert len(entry.top_logprobs) == 2 and entry.logprob <= 0
        assert bytes(entry.bytes or []).decode(errors="replace") == entry.token


def test_completion_logprobs_have_tokens_offsets_and_top(client: openai.OpenAI) -> None:
    choice = client.completions.create(model="any", prompt="The sky is", max_tokens=6, logprobs=3).choices[0]
    logprobs = choice.logprobs
    assert logprobs is not None and logprobs.tokens and logprobs.text_offset and logprobs.top_logprobs
    assert "".join(logprobs.tokens) == choice.text
    assert logprobs.text_offset == [sum(len(t) for t in logprobs.tokens[:i]) for i in range(len(logprobs.tokens))]
    assert all(len(top) <= 3 for top in logprobs.top_logprobs)


def test_n_choices_with_their_indexes_and_usage(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(model="any", messages=ask("Name a fruit."), n=2, max_tokens=6, seed=3)
    assert [c.index for c in answer.choices] == [0, 1]
    assert all(c.message.content for c in answer.choices)
    assert answer.usage is not None and answer.usage.completion_tokens > 6  # both choices count
    chunks = list(
        client.chat.completions.create(
            model="any", messages=ask("Name a fruit."), n=2, max_tokens=6, seed=3, stream=True
        )
    )
    streamed = {
        i: "".join(c.choices[0].delta.content or "" for c in chunks if c.choices and c.choices[0].index == i)
        for i in (0, 1)
    }
    assert streamed == {c.index: c.message.content for c in answer.choices}  # the same seed, the same choices
    ended = {c.choices[0].index for c in chunks if c.choices and c.choices[0].finish_reason}
    assert ended == {0, 1}
    text = client.completions.create(model="any", prompt="The sky is", n=2, max_tokens=4, seed=3)
    assert [c.index for c in text.choices] == [0, 1]


def test_n_choices_each_with_logprobs(client: openai.OpenAI) -> None:
    messages = ask("Name a fruit.")
    answer = client.chat.completions.create(model="any", messages=messages, n=2, max_tokens=6, seed=3, logprobs=True)
    for choice in answer.choices:
        assert choice.logprobs is not None and choice.logprobs.content
        assert "".join(t.token for t in choice.logprobs.content) == choice.message.content
    text = client.completions.create(model="any", prompt="The sky is", n=2, max_tokens=4, seed=3, logprobs=1)
    for item in text.choices:
        assert item.logprobs is not None and item.logprobs.tokens is not None
        assert "".join(item.logprobs.tokens) == item.text
        assert item.logprobs.text_offset == [
            sum(map(len, item.logprobs.tokens[:i])) for i in range(len(item.logprobs.tokens))
        ]


def test_no_logprobs_unless_asked(client: openai.OpenAI) -> None:
    assert client.chat.completions.create(model="any", messages=ask("Hi"), max_tokens=3).choices[0].logprobs is None


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
        ({"messages": ask("hi"), "temperature": 5}, "temperature"),
        ({"messages": ask("hi"), "max_tokens": 0}, "max_tokens"),
        ({"messages": ask("hi"), "stop": 3}, "stop"),
        ({"messages": ask("hi"), "stop": ["x"] * 17}, "stop"),
        ({"messages": ask("hi"), "max_tokens": "3"}, "max_tokens"),
        ({"messages": ask("hi"), "stream": "yes"}, "stream"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}, "messages[0].content[0].text"),
        ({"messages": [{"role": "assistant", "content": "hi"}]}, "messages[0].role"),
        ({"messages": ask("hi"), "n": 3}, "n"),  # more than the server's 2 slots
        ({"messages": ask("hi"), "top_logprobs": 2}, "top_logprobs"),
        ({"messages": ask("hi"), "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"messages": ask("hi"), "logprobs": 3}, "logprobs"),
        ({"messages": ask("hi"), "logit_bias": {"x": 1}}, "logit_bias"),
        ({"messages": ask("hi"), "logit_bias": {"1": 500}}, "logit_bias"),
        ({"messages": ask("hi"), "logit_bias": {"9" * 5000: 1}}, "logit_bias"),
        ({"messages": ask("hi"), "logit_bias": {"007": 1}}, "logit_bias"),
        ({"messages": ask("hi"), "logit_bias": {"7": True}}, "logit_bias"),
        ({"messages": ask("hi"), "logit_bias": {"99999999": 1}}, "logit_bias"),
        ({"messages": ask("hi"), "response_format": {"type": "xml"}}, "response_format.type"),
        ({"messages": ask("hi"), "response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        (
            {"messages": ask("hi"), "response_format": schema_format({"type": "integer", "minimum": 1})},
            "response_format",
        ),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, None),
    ],
)
def test_malformed_requests_are_400_with_the_param(base_url: str, body: dict[str, object], param: str | None) -> None:
    response = httpx.post(base_url + CHAT, json=body, timeout=30)
    assert response.status_code == 400
    error = error_of(response)
    assert error["type"] == "invalid_request_error"
    if param is not None:
        assert str(error["param"]).startswith(param), error


def test_a_body_that_is_not_json_is_400(base_url: str) -> None:
    response = httpx.post(base_url + CHAT, content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert error_of(response)["code"] == "invalid_json"
    form = httpx.post(base_url + CHAT, data={"messages": "hi"})  # what curl -d sends
    assert form.status_code == 400
    assert "Content-Type: application/json" in str(error_of(form)["message"])


def test_fields_read_but_not_supported_are_refused_not_ignored(base_url: str) -> None:
    for field, value in (("echo", True), ("suffix", "x"), ("best_of", 2)):
        response = httpx.post(base_url + COMPLETIONS, json={"prompt": "Hi", field: value}, timeout=30)
        assert response.status_code == 400
        assert error_of(response)["param"] == field
    too_long = httpx.post(base_url + COMPLETIONS, json={"prompt": "word " * 1500}, timeout=30)
    assert error_of(too_long)["param"] == "prompt"
    assert httpx.head(base_url + "/health").status_code == 200


def test_a_prompt_longer_than_the_context_is_400_before_any_stream(base_url: str) -> None:
    for stream in (False, True):
        body = {"messages": ask("word " * 1500), "max_tokens": 4, "stream": stream}
        response = httpx.post(base_url + CHAT, json=body, timeout=60)
        assert response.status_code == 400
        assert response.headers["content-type"].startswith("application/json")
        assert error_of(response)["code"] == "context_length_exceeded"


def test_unknown_routes_and_methods_get_openai_errors(base_url: str) -> None:
    assert httpx.get(f"{base_url}/v1/nothing").status_code == 404
    error_of(httpx.get(f"{base_url}/v1/nothing"))
    response = httpx.get(base_url + CHAT)
    assert response.status_code == 405
    error_of(response)


def test_a_body_over_the_cap_is_413(model_path: Path) -> None:
    with serving(create_app(server_load(model_path, n_parallel=1), max_body_bytes=2000)) as url:
        response = httpx.post(url + CHAT, json={"messages": ask("x" * 5000)}, timeout=30)
        assert response.status_code == 413
        assert error_of(response)["code"] == "request_too_large"
        chunked = httpx.post(url + CHAT, content=iter([b"{" + b" " * 3000 + b"}"]), timeout=30)  # no Content-Length
        assert chunked.status_code == 413
        assert httpx.post(url + CHAT, json={"messages": ask("hi"), "max_tokens": 2}, timeout=60).status_code == 200


def test_a_body_that_trickles_in_is_408_and_the_server_serves_on(model_path: Path) -> None:
    with serving(create_app(server_load(model_path, n_parallel=1), body_timeout=0.5)) as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as slow:
            head = (
                f"POST {CHAT} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
            )
            slow.sendall(head.encode() + b'{"messages": ')  # and then nothing more
            answer = b""
            while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                chunk = slow.recv(4096)  # the server answers once the body is late (30 s timeout: a failure)
                if not chunk:
                    break
                answer += chunk
        status_line, _, rest = answer.partition(b"\r\n")
        assert status_line.split()[1] == b"408", answer
        assert json.loads(rest.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "request_timeout"
        assert httpx.post(url + CHAT, json={"messages": ask("hi"), "max_tokens": 2}, timeout=60).status_code == 200


def test_api_key_is_required_except_for_health_and_the_page(model_path: Path) -> None:
    with serving(create_app(server_load(model_path, n_parallel=1), api_key="s3cret")) as url:
        assert httpx.get(f"{url}/health").status_code == 200
        assert httpx.get(f"{url}/").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            response = httpx.get(f"{url}/v1/models", headers=headers)
            assert response.status_code == 401
            assert error_of(response)["code"] == "invalid_api_key"
        assert httpx.get(f"{url}/metrics").status_code == 401
        good = openai.OpenAI(base_url=f"{url}/v1", api_key="s3cret", max_retries=0)
        assert good.chat.completions.create(model="m", messages=ask("hi"), max_tokens=2).choices
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{url}/v1", api_key="nope", max_retries=0).models.list()


def test_cors_only_for_the_origins_given(model_path: Path, base_url: str) -> None:
    preflight = {"Origin": "http://app.example", "Access-Control-Request-Method": "POST"}
    assert "access-control-allow-origin" not in httpx.options(base_url + CHAT, headers=preflight).headers
    with serving(create_app(server_load(model_path, n_parallel=1), cors_origins=["http://app.example"])) as url:
        allowed = httpx.options(url + CHAT, headers=preflight)
        assert allowed.headers["access-control-allow-origin"] == "http://app.example"
        other = httpx.options(url + CHAT, headers={**preflight, "Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def test_a_full_queue_is_429_with_retry_after(model_path: Path) -> None:
    with serving(create_app(server_load(model_path, n_parallel=1), max_queue=1)) as url:
        statuses: list[int] = []
        short = {"messages": ask("Hi"), "max_tokens": 2}
        queued = threading.Thread(
            target=lambda: statuses.append(httpx.post(url + CHAT, json=short, timeout=60).status_code)
        )
        with httpx.stream("POST", url + COMPLETIONS, json=COUNTING, timeout=60) as running:
            lines = running.iter_lines()  # kept: a dropped iterator closes the connection
            next(lines)  # it runs
            queued.start()
            wait_until(lambda: metric(url, "llama_isolate_queue_length") == 1, what="a queued prompt")
            refused = httpx.post(url + CHAT, json=short, timeout=60)
            assert refused.status_code == 429
            assert refused.headers["retry-after"] == "1"
            assert error_of(refused)["code"] == "queue_full"
        queued.join(timeout=60)  # the running stream's client left: the queued one ran
        assert statuses == [200]


def test_embeddings_beyond_the_queue_are_429(model_path: Path) -> None:
    import psutil

    before = {child.pid for child in psutil.Process().children()}
    with serving(create_app(server_load(model_path, n_parallel=1), max_queue=1)) as url:
        (worker,) = [child for child in psutil.Process().children() if child.pid not in before]
        embed = url + "/v1/embeddings"
        outcome: list[httpx.Response] = []
        senders = [
            threading.Thread(target=lambda: outcome.append(httpx.post(embed, json={"input": "a"}, timeout=60)))
            for _ in range(2)
        ]
        worker.suspend()  # holds the first request in the worker, and the second behind it
        try:
            for sender in senders:
                sender.start()
            wait_until(lambda: metric(url, "llama_isolate_embedding_requests") == 2, what="two embeddings requests in")
            refused = httpx.post(embed, json={"input": "one more"}, timeout=60)  # max_queue=1: one may wait
        finally:
            worker.resume()
        assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
        assert error_of(refused)["code"] == "queue_full"
        for sender in senders:
            sender.join(timeout=60)
        assert [r.status_code for r in outcome] == [200, 200]
        assert metric(url, "llama_isolate_embedding_requests") == 0
        assert httpx.post(embed, json={"input": "now"}, timeout=60).status_code == 200


def test_mounted_under_a_prefix_of_another_app(model_path: Path) -> None:
    from fastapi import FastAPI

    llm = create_app(server_load(model_path, n_parallel=1), api_key="k")
    host = FastAPI(lifespan=llm.router.lifespan_context)
    host.mount("/llm", llm)
    with serving(host) as url:
        assert httpx.get(f"{url}/llm/").status_code == 200  # the page, public
        assert httpx.get(f"{url}/llm/static/js/chat.js").status_code == 200
        assert httpx.get(f"{url}/llm/v1/models").status_code == 401
        sdk = openai.OpenAI(base_url=f"{url}/llm/v1", api_key="k", max_retries=0)
        assert sdk.chat.completions.create(model="m", messages=ask("hi"), max_tokens=2).choices
        auth = {"Authorization": "Bearer k"}
        text = httpx.get(f"{url}/llm/metrics", headers=auth).text
        assert 'llama_isolate_requests_total{endpoint="/v1/chat/completions",status="200"} 1.0' in text
