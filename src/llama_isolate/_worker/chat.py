"""Chat templates: a conversation becomes the prompt text the model was trained on.

The template is the model's own (GGUF key ``tokenizer.chat_template``) or the
`LlamaLoad.chat_template` override, rendered with Jinja in a sandbox, as
Hugging Face's tokenizers do. A model without any template (a base model such
as Gemma 3 270M) gets plain text completion: the turns' contents are joined
as they are, so the model simply continues the text of the conversation.
"""

from __future__ import annotations

import datetime
import json
import logging
import re
import secrets
from collections.abc import Sequence
from typing import Any, Literal

import jinja2
import jinja2.sandbox

logger = logging.getLogger("llama_isolate.worker")

Span = tuple[str, bool]  # a piece of the prompt text, and whether it came from a message's content


class ChatTemplateError(Exception):
    """The template could not be compiled or rendered."""


def _raise_exception(message: str) -> None:
    raise ChatTemplateError(f"the chat template refused the conversation: {message}")


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


def tool_format_of(template: str | None) -> Literal["hermes", "llama3"]:
    """How a template shows tool calls: Llama 3's JSON when it has Llama 3's tool turn (``ipython``), else Hermes's
    ``<tool_call>`` (which templates without any tool support get too; see docs/tools.md)."""
    if template and "<tool_call>" not in template and "<|start_header_id|>" in template and "ipython" in template:
        return "llama3"
    return "hermes"


class ChatFormatter:
    """Renders conversations with one template, or as plain text when there is none."""

    def __init__(self, template: str | None, *, bos_token: str, eos_token: str) -> None:
        self.has_template = template is not None
        self.tool_format = tool_format_of(template)
        self._bos = bos_token
        self._eos = eos_token
        self._template: jinja2.Template | None = None
        if template is not None:
            env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
            env.globals["raise_exception"] = _raise_exception
            env.globals["strftime_now"] = _strftime_now
            # As Hugging Face's tokenizers do: keys kept in order, no HTML escaping.
            env.filters["tojson"] = lambda value, indent=None: json.dumps(value, ensure_ascii=False, indent=indent)
            try:
                self._template = env.from_string(template)
            except jinja2.TemplateError as exc:
                raise ChatTemplateError(f"the chat template does not compile: {exc}") from exc

    def render_spans(self, messages: Sequence[tuple[str, str]], tools: list[Any] | None = None) -> list[Span]:
        """The prompt text as spans: the template's own text, and what came from the messages' contents.

        The caller tokenizes the contents as plain text, so that a user who
        writes ``<|im_end|>`` cannot close their turn and write another role's.
        The template is rendered with a marker in place of each content; where
        putting the contents back in place of the markers gives the real render,
        the spans are exact. A template that changes a content (trims it, or
        cuts earlier answers' reasoning as Qwen 3's does) gets its contents
        found between the template's own pieces, in order; a template whose own
        text changes with the contents (seen by no template here) gets the whole
        render as template text, and a warning in the log.
        """
        text = self.render(messages, tools)
        if self._template is None:
            return [(text, True)]
        nonce = secrets.token_hex(6)
        marked = self.render([(role, f"\ue000{nonce}:{i}\ue001") for i, (role, _) in enumerate(messages)], tools)
        pieces = re.split(f"\ue000{nonce}:(\\d+)\ue001", marked)  # template, index, template, index, ..., template
        exact: list[Span] = []
        for i, piece in enumerate(pieces):
            content = i % 2 == 1
            written = messages[int(piece)][1] if content else piece
            if written:
                exact.append((written, content))
        if "".join(piece for piece, _ in exact) == text:
            return exact
        return self._found_between(text, pieces[::2])

    def _found_between(self, text: str, template_pieces: list[str]) -> list[Span]:
        """The contents of `text` found between the template's own pieces, in order (see `render_spans`)."""
        spans: list[Span] = []
        at = 0
        last = len(template_pieces) - 1
        for i, piece in enumerate(template_pieces):
            if i == 0:
                found = 0 if text.startswith(piece) else -1
            elif i == last:
                found = len(text) - len(piece) if text.endswith(piece) and len(text) - len(piece) >= at else -1
            else:
                found = text.find(piece, at)
            if found < 0:
                logger.warning("the chat template's own text changes with the messages: contents parsed as template")
                return [(text, False)]
            if found > at:
                spans.append((text[at:found], True))
            if piece:
                spans.append((piece, False))
            at = found + len(piece)
        return spans

    def render(self, messages: Sequence[tuple[str, str]], tools: list[Any] | None = None) -> str:
        """The prompt text for `messages` (and the function specs `tools`), ending where the reply begins."""
        if self._template is None:
            return "".join(content for _, content in messages)
        turns = [{"role": role, "content": content} for role, content in messages]
        extra = {} if tools is None else {"tools": tools}
        try:
            return self._template.render(
                messages=turns,
                add_generation_prompt=True,
                bos_token=self._bos,
                eos_token=self._eos,
                **extra,
            )
        except ChatTemplateError:
            raise
        except jinja2.TemplateError as exc:
            raise ChatTemplateError(f"the chat template failed: {exc}") from exc
