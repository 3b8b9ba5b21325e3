"""The endpoints: /v1/models, /v1/chat/completions, /v1/completions, /v1/embeddings, /health, /metrics."""

from __future__ import annotations

import base64
import dataclasses
import struct
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from llama_isolate import CompletionEvent, PromptOptions

from . import convert
from .errors import ApiError, event_error, refused_as_api_error
from .pool import ModelPool
from .responses import OpenAIAnswer, completed
from .schemas import IDS_AS_INPUT, ChatCompletionRequest, CompletionRequest, EmbeddingRequest, Sampling, token_ids
from .service import ModelService
from .streaming import EventStreamResponse, unless_disconnected

router = APIRouter()
STARTED = int(time.time())


def pool_of(request: Request) -> ModelPool:
    pool: ModelPool = request.app.state.pool
    return pool


REPLICA_HEADER = "x-llama-isolate-replica"  # which model and replica answered: "name/index"


def _model(pool: ModelPool, name: str) -> dict[str, Any]:
    """OpenAI's model object, plus ``input_modalities``: what its messages may hold (``image`` with an mmproj)."""
    takes = ["text", "image"] if pool.first(name).load.mmproj_path is not None else ["text"]
    return {"id": name, "object": "model", "created": STARTED, "owned_by": "llama-isolate", "input_modalities": takes}


@router.get("/v1/models")
async def models(request: Request) -> dict[str, Any]:
    pool = pool_of(request)
    return {"object": "list", "data": [_model(pool, name) for name in pool.models]}


@router.get("/v1/models/{model_id:path}")
async def model(model_id: str, request: Request) -> dict[str, Any]:
    """One model by its id (`client.models.retrieve`); only the ids `/v1/models` lists are found."""
    known = pool_of(request).models
    if model_id not in known:
        asked = model_id if len(model_id) <= 80 else f"{model_id[:80]}... ({len(model_id)} characters)"
        raise ApiError(
            404,
            f"no model with id {asked!r}; this server has: {', '.join(sorted(known))}",
            param="model",
            code="model_not_found",
        )
    return _model(pool_of(request), model_id)


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    pool = pool_of(request)
    turn = convert.chat_turn(
        body,
        images_allowed=pool.first(body.model).load.mmproj_path is not None,
        trim_history=request.app.state.trim_history,
    )
    service = await pool.route(body.model, turn.messages)
    max_tokens = body.max_completion_tokens or body.max_tokens
    reply = OpenAIAnswer("chat", service.name, logprobs=turn.options.logprobs is not None)
    return await _answer(request, service, reply, body=body, turn=turn, max_tokens=max_tokens)


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request) -> Response:
    refused = {"echo": body.echo is True, "suffix": body.suffix is not None, "best_of": body.best_of not in (None, 1)}
    for name, given in refused.items():
        if given:
            raise ApiError(400, f"{name} is not supported", param=name)
    if token_ids(body.prompt):
        raise ApiError(400, IDS_AS_INPUT, param="prompt", code="unsupported_value")
    prompt = body.prompt if isinstance(body.prompt, str) else str(body.prompt[0])
    if not prompt:
        raise ApiError(400, "the prompt is empty", param="prompt")
    service = await pool_of(request).route(body.model)
    options = convert.prompt_options(raw=True, logprobs=body.logprobs, n=body.n or 1)
    turn = convert.Turn([{"role": "user", "content": prompt}], options)
    reply = OpenAIAnswer("text", service.name, logprobs=body.logprobs is not None)
    return await _answer(request, service, reply, body=body, turn=turn, max_tokens=body.max_tokens, param="prompt")


async def _answer(
    request: Request,
    service: ModelService,
    reply: OpenAIAnswer,
    *,
    body: Sampling,
    turn: convert.Turn,
    max_tokens: int | None,
    param: str = "messages",
) -> Response:
    """Run the prompt; errors before its first token are HTTP errors, after it they end the stream."""
    replica = {REPLICA_HEADER: f"{service.name}/{service.replica}"}
    sampler = convert.sampler(service.sampler_params, body, n_vocab=service.n_vocab)
    options = dataclasses.replace(turn.options, sampler_params=sampler, max_tokens=max_tokens)
    generation = await service.generate(turn.messages, options, param=param)
    try:
        first = await unless_disconnected(request.receive, generation.next())
        if isinstance(first, CompletionEvent) and not completed(first):
            raise event_error(first, param, _grammar_param(options))
        if body.stream:
            stream = reply.stream(generation, first, body.include_usage)
            return EventStreamResponse(stream, generation.close, headers=replica)
        if not isinstance(first, CompletionEvent):
            await unless_disconnected(request.receive, generation.finish())
        event = generation.event
        assert event is not None
        if not completed(event):
            raise event_error(event, param, _grammar_param(options))
        # The event's text: with a call that max_tokens cut short, that is what the model wrote of it too.
        return JSONResponse(reply.whole(event.text, event), headers=replica)
    except BaseException:
        await generation.close()
        raise
    finally:
        if not body.stream:
            await generation.close()


def _grammar_param(options: PromptOptions) -> str | None:
    """The field a prompt's grammar came from, for its errors."""
    return "tools" if options.tools else "response_format" if options.json_schema is not None else None


@router.post("/v1/embeddings")
async def embeddings(body: EmbeddingRequest, request: Request) -> dict[str, Any]:
    service = await pool_of(request).route(body.model)
    if token_ids(body.input):
        raise ApiError(400, IDS_AS_INPUT, param="input", code="unsupported_value")
    texts = [body.input] if isinstance(body.input, str) else [str(text) for text in body.input]
    with service.embedding_turn():
        data, tokens = await _embed_all(service, body, texts, request)
    return {
        "object": "list",
        "data": data,
        "model": service.name,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


async def _embed_all(
    service: ModelService, body: EmbeddingRequest, texts: list[str], request: Request
) -> tuple[list[dict[str, Any]], int]:
    """Each text's embedding, in order, and the tokens they took."""
    data = []
    tokens = 0
    for i, text in enumerate(texts):
        param = "input" if isinstance(body.input, str) else f"input[{i}]"
        if not text:
            raise ApiError(400, "cannot embed an empty text", param=param)
        with refused_as_api_error(param, feature="embeddings"):
            result = await unless_disconnected(request.receive, service.embed(text))
        vector = result.vector
        tokens += result.tokens
        if body.dimensions is not None and body.dimensions != len(vector):
            raise ApiError(400, f"this model's embeddings have {len(vector)} dimensions", param="dimensions")
        encoded: Any = vector
        if body.encoding_format == "base64":
            encoded = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
        data.append({"object": "embedding", "index": i, "embedding": encoded})
    return data, tokens


@router.api_route("/health", methods=["GET", "HEAD"])
async def health(request: Request) -> JSONResponse:
    """200 while every model has a ready replica; each replica's status when there is more than one."""
    models = pool_of(request).models
    down = [r.status for replicas in models.values() if not any(r.status.is_ready for r in replicas) for r in replicas]
    body: dict[str, Any] = {"status": down[0].value if down else "ok"}
    if sum(map(len, models.values())) > 1:
        body["models"] = {name: [r.status.value for r in replicas] for name, replicas in models.items()}
    return JSONResponse(body, status_code=503 if down else 200)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    return Response(pool_of(request).metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")
