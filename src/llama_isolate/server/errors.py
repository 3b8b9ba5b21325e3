"""Errors as OpenAI's API sends them: ``{"error": {"message", "type", "param", "code"}}`` with a fitting status.

Every error the server returns has this shape, including FastAPI's own
(a body that does not validate is a 400 naming the field, never a 422 with
``detail``), unknown routes and wrong methods.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from llama_isolate import (
    CompletionEvent,
    LlamaContextLengthExceeded,
    LlamaFeatureNotEnabled,
    LlamaQueueFull,
    LlamaRequestError,
    LlamaSchemaError,
    LlamaStatusError,
    LlamaTypeError,
    LlamaValueError,
    LlamaWorkerDied,
)

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable_error",
}
RETRY_AFTER_S = 1  # what 429 and 503 tell a client to wait before it tries again
_CODES = {400: "invalid_value", 404: "not_found", 405: "method_not_allowed", 500: "internal_error"}
"""The code of an error that names none more precise: a program can always branch on ``code``."""


class ApiError(Exception):
    """An error answer: its HTTP status and OpenAI's error object."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code or _CODES.get(status)
        self.headers = dict(headers or {})
        if status in (429, 503):
            self.headers.setdefault("Retry-After", str(RETRY_AFTER_S))

    def body(self) -> dict[str, Any]:
        """OpenAI's error object."""
        return error_body(self.status, self.message, param=self.param, code=self.code)

    def response(self) -> JSONResponse:
        return ErrorResponse(self.body(), status_code=self.status, headers=self.headers)


class ErrorResponse(JSONResponse):
    """JSON written in ASCII: an error that quotes what a client sent stays writable whatever it quoted."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, separators=(",", ":")).encode("ascii")


class ClientGone(Exception):
    """The client closed its connection; its work was stopped and nobody reads the answer."""


CLIENT_GONE_STATUS = 499  # nginx's "client closed request": what the metrics count such requests as
CLIENT_GONE_KEY = "llama_isolate.client_gone"  # set in a request's ASGI scope when its stream's client left


def error_body(status: int, message: str, *, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """``{"error": {...}}`` for a status."""
    kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def event_error(event: CompletionEvent, param: str = "messages", grammar_param: str | None = None) -> ApiError:
    """The answer for a prompt that failed before its first token (`param`: the field holding the prompt;
    `grammar_param`: the one its reply's grammar came from, ``response_format`` or ``tools``)."""
    message = event.error or "the prompt failed"
    code = event.error_code
    if code in ("context_length_exceeded", "invalid_prompt"):
        return ApiError(400, message, param=param, code=code)
    if code == "invalid_grammar":
        where = f"the reply's grammar, made from {grammar_param}" if grammar_param else "the reply's grammar"
        return ApiError(400, f"{where}: {message}", param=grammar_param, code="invalid_schema")
    if code == "worker_died":
        return ApiError(503, f"{message}; the model is restarting, try again", code=code)
    if event.finish_reason in ("stopped", "cancelled"):
        return ApiError(503, "the request was cancelled: the server is shutting down", code="cancelled")
    return ApiError(500, message, code=code)


_UNAVAILABLE = (
    (LlamaQueueFull, 429, "the server is busy: {}", "queue_full"),
    (LlamaStatusError, 503, "the model is not ready: {}", "model_not_ready"),
    (LlamaWorkerDied, 503, "{}; the model is restarting, try again", "worker_died"),
)
"""Library errors that say the model cannot take the request now: (type, status, message, code)."""
_FEATURES = {"images": (None, "images_not_supported"), "embeddings": ("model", "embeddings_not_enabled")}
"""What a request that needs a feature the model was not loaded with is refused as: (param, code)."""


def api_error_of(
    exc: BaseException, *, default_param: str | None, feature: Literal["images", "embeddings"] = "images"
) -> ApiError | None:
    """The answer for an error the library raised; None for one that is neither the request's nor the model's state.

    `default_param` is the field that holds what the library was given (``messages``, ``prompt``,
    ``input[2]``): the param of an error that names nothing more precise, or names something the
    request calls differently. A `LlamaValueError` (or `LlamaTypeError`, or `LlamaSchemaError`) names
    its own: the library's ``param`` becomes the request's field (`http_param`) and its ``code`` is
    kept. `feature` is the one the request needs, for `LlamaFeatureNotEnabled`.
    """
    for kind, status, message, code in _UNAVAILABLE:
        if isinstance(exc, kind):
            return ApiError(status, message.format(exc), code=code)
    if isinstance(exc, (LlamaValueError, LlamaTypeError)):
        why = "the JSON schema cannot be enforced: " if isinstance(exc, LlamaSchemaError) else ""
        return ApiError(400, f"{why}{exc}", param=http_param(exc.param, default_param), code=exc.code)
    param, code = default_param, "invalid_value"
    if isinstance(exc, LlamaFeatureNotEnabled):
        named, code = _FEATURES[feature]
        param = named or default_param
    elif isinstance(exc, LlamaContextLengthExceeded):
        code = "context_length_exceeded"
    elif not isinstance(exc, (LlamaRequestError, ValueError, TypeError)):  # (a check that names no param yet)
        return None
    return ApiError(400, str(exc), param=param, code=code)


@contextlib.contextmanager
def refused_as_api_error(
    default_param: str | None, *, feature: Literal["images", "embeddings"] = "images"
) -> Iterator[None]:
    """What the library refuses inside the block leaves it as the `ApiError` of `api_error_of`; anything else as it
    was."""
    try:
        yield
    except Exception as exc:
        error = api_error_of(exc, default_param=default_param, feature=feature)
        if error is None:
            raise
        raise error from None


_SAME_NAME = {"messages", "tools", "tool_choice", "n", "max_tokens"}
"""The library's arguments that a request's field of the same name is handed to."""
_SAMPLER_FIELDS = {"greedy": "temperature"}  # a SamplerParams field set from another request field


def http_param(param: str | None, default: str | None) -> str | None:
    """The request's field for a library ``param``: ``sampler_params.temperature`` is ``temperature``,
    ``json_schema`` is ``response_format``, ``messages[2].content`` and ``tools[0].function.name`` stay;
    what a request has no field for (``prompt``, ``images[0]``: parts of a message) is `default`."""
    if param is None:
        return default
    if param == "json_schema" or param.startswith("json_schema."):
        return "response_format"
    if param.startswith("sampler_params."):
        field = param.removeprefix("sampler_params.")
        return _SAMPLER_FIELDS.get(field, field)
    return param if re.split(r"[.\[]", param, maxsplit=1)[0] in _SAME_NAME else default


def install(app: FastAPI) -> None:
    """Make every error the app returns OpenAI-shaped."""

    async def api_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return exc.response()

    async def invalid_body(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        content_type = request.headers.get("content-type", "")
        if request.method == "POST" and not content_type.startswith("application/json"):
            shown = content_type or "none"
            return ApiError(
                400, f"the body must be JSON with Content-Type: application/json (got {shown})", code="invalid_json"
            ).response()
        return validation_error(exc.errors()).response()

    async def http_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        message = {404: "no such endpoint", 405: "method not allowed on this endpoint"}.get(
            exc.status_code, str(exc.detail)
        )
        code = "invalid_json" if exc.status_code == 400 else None  # FastAPI could not parse the body
        return ApiError(exc.status_code, message, code=code, headers=dict(exc.headers or {})).response()

    async def client_gone(_: Request, exc: Exception) -> JSONResponse:
        return ErrorResponse(error_body(400, "the client closed the connection"), status_code=CLIENT_GONE_STATUS)

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, invalid_body)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(ClientGone, client_gone)


def validation_error(errors: Any) -> ApiError:
    """A 400 naming the field that did not validate, as OpenAI writes it (``messages[0].content``).

    A field that takes several types (a string or a list) fails once per
    type; the error kept is one from the type the value has (a list too
    long, rather than "not a string").
    """
    errors = list(errors) or [{}]
    if any(e.get("type") == "json_invalid" for e in errors):
        detail = next(e for e in errors if e.get("type") == "json_invalid").get("msg", "")
        return ApiError(400, f"the request body is not valid JSON: {detail}", code="invalid_json")
    mismatch = [e for e in errors if not str(e.get("type", "")).endswith("_type")]
    first = mismatch[0] if mismatch else max(errors, key=lambda e: len(e.get("loc", ())))  # the deepest match
    param = _param(first.get("loc", ()))
    detail = first.get("msg", "invalid request body")
    where = f"'{param}': " if param else ""
    return ApiError(400, f"{where}{detail}", param=param, code="invalid_value")


def _param(location: Any) -> str | None:
    """A pydantic location as OpenAI's ``param``: ``messages[0].content``, without union branch names."""
    out = ""
    parts = list(location)
    for i, part in enumerate(parts):
        if part == "body":
            continue
        if part in _TAGS and i + 1 < len(parts) and isinstance(parts[i + 1], str):
            continue  # a content part's type tag, before its field
        if isinstance(part, int):
            out += f"[{part}]"
        elif "[" in part or "-" in part or part[:1].isupper() or part in _TYPE_NAMES:
            continue  # the name of one of a union's types, not a field
        else:
            out += f".{part}" if out else part
    return out or None


_TYPE_NAMES = {"str", "int", "float", "bool", "dict", "list", "none"}
_TAGS = {"text", "image_url"}
