"""Prompt preparation: a conversation becomes the items the engine decodes.

While other conversations decode, a prompt is prepared off the engine's
thread as soon as it arrives: rendering the chat template, tokenizing,
fitting the context and decoding images (text on one thread, prompts with
images on another, so that text never waits for a large PNG; a text prompt
that comes while nothing decodes is prepared at once, see `Engine.submit`). The engine keeps stepping the other
conversations (and applying stops) meanwhile; a prompt is admitted once it
is ready, ready prompts in the order they came. Preparation is bounded
before it starts (`bounds.PromptBounds`: bytes, messages, special tokens,
and with images their pixels), so a prompt that cannot fit costs nothing to
refuse, and none can keep a thread for long.

Any failure while preparing one prompt (a template that refuses the
conversation, an image that does not decode, a prompt too long for the
context, or anything unexpected) is that prompt's `Refused`, never the
worker's.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass

from .. import _protocol as protocol
from .._events import ErrorCode
from .bounds import PromptBounds, TooBig
from .chat import ChatTemplateError
from .fit import ContextFitter, ContextFull, Encode
from .prompt import ImageChunk, Item, Prompt
from .vision import ImageError, Vision
from .vocab import Vocab

logger = logging.getLogger("llama_isolate.worker")

_CONTEXT = "ContextParams.n_ctx, serve --ctx"


class Refused(Exception):
    """The prompt cannot run; the message says why (it becomes the prompt's error), `code` for programs."""

    def __init__(self, message: str, code: ErrorCode = "invalid_prompt") -> None:
        super().__init__(message)
        self.code: ErrorCode = code


@dataclass(eq=False)
class Prepared:
    """A prompt ready for a slot: its items, and how many old messages were left out."""

    request: protocol.Submit
    prompt: Prompt
    dropped: int


class Preparer:
    """Makes `Prepared` prompts on its threads (`start`, then `done`); `prepare` does one on the caller's thread."""

    def __init__(
        self, vocab: Vocab, vision: Vision | None, n_ctx: int, wake: Callable[[], None], *, max_messages: int
    ) -> None:
        self._vocab = vocab
        self._vision = vision
        self._n_ctx = n_ctx
        self._fitter = ContextFitter(n_ctx)
        self.bounds = PromptBounds(vocab, n_ctx=n_ctx, max_messages=max_messages)
        self._wake = wake
        # Two threads: text, and prompts with images (decoding a large PNG takes seconds; text need not wait).
        self._pools: dict[bool, concurrent.futures.ThreadPoolExecutor] = {}
        self._in_flight: dict[str, tuple[protocol.Submit, concurrent.futures.Future[Prepared]]] = {}
        # Preparations ended: progress the worker reports to the parent's liveness check (both threads add to it;
        # an increment lost to a race only delays the count, which need only move).
        self.finished = 0

    def prepare(self, request: protocol.Submit) -> Prepared:
        """Prepare a prompt now; raises `Refused`."""
        try:
            keep = self.bounds.messages_to_keep(request.messages, raw=request.raw, trim=request.trim)
            prompt, dropped = self._fitter.fit(
                request.scope_id,
                [request.messages[i][0] for i in keep],
                request.max_tokens,
                self._encoder(request, keep),
                trim=request.trim,
            )
            dropped += len(request.messages) - len(keep)
        except TooBig as exc:
            raise Refused(f"{exc} ({_CONTEXT})", "context_length_exceeded") from None
        except ContextFull as exc:
            raise Refused(f"{exc} ({_CONTEXT})", "context_length_exceeded") from None
        except (ChatTemplateError, ImageError) as exc:
            raise Refused(str(exc)) from None
        except Exception as exc:
            logger.exception("preparing a prompt failed")
            raise Refused(f"the prompt could not be prepared ({type(exc).__name__}: {exc})") from None
        try:
            self._check(prompt)
        except Refused:
            prompt.free()
            raise
        return Prepared(request, prompt, dropped)

    def start(self, request: protocol.Submit) -> None:
        """Prepare a prompt on the preparation thread; `done()` hands it over later."""
        images = bool(request.images)
        if images not in self._pools:
            name = "prepare-images" if images else "prepare"
            self._pools[images] = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        future = self._pools[images].submit(self.prepare, request)
        self._in_flight[request.prompt_id] = (request, future)
        future.add_done_callback(self._ended)

    def _ended(self, _: concurrent.futures.Future[Prepared]) -> None:
        self.finished += 1
        self._wake()

    @property
    def in_flight(self) -> int:
        """Prompts being prepared."""
        return len(self._in_flight)

    def done(self) -> list[tuple[protocol.Submit, Prepared | Refused]]:
        """The prompts whose preparation finished since the last call, in the order they came (a prompt still
        being prepared, its images decoding say, does not hold back those ready after it)."""
        finished: list[tuple[protocol.Submit, Prepared | Refused]] = []
        for prompt_id, (request, future) in list(self._in_flight.items()):
            if not future.done():
                continue
            del self._in_flight[prompt_id]
            try:
                finished.append((request, future.result()))
            except Refused as exc:
                finished.append((request, exc))
        return finished

    def cancel(self, prompt_id: str) -> bool:
        """Abandon a prompt waiting for or in its preparation (a result that still comes is freed); False if it
        was neither."""
        entry = self._in_flight.pop(prompt_id, None)
        if entry is None:
            return False
        entry[1].cancel()  # not started yet: it never will be
        entry[1].add_done_callback(_free_result)
        return True

    def forget(self, scope_id: str) -> None:
        """Drop what is remembered of a conversation (how many old turns it leaves out)."""
        self._fitter.forget(scope_id)

    def close(self) -> bool:
        """Abandon every preparation and end the thread, without waiting; False if one is still running.

        A running one may be inside mtmd: the projector must not be freed under it.
        """
        running = [future for _, future in self._in_flight.values() if not future.done()]
        for prompt_id in list(self._in_flight):
            self.cancel(prompt_id)
        for pool in self._pools.values():
            pool.shutdown(wait=False, cancel_futures=True)
        return not any(future.running() for future in running)

    def _check(self, prompt: Prompt) -> None:
        if len(prompt) >= self._n_ctx:
            images = prompt.image_positions()
            raise Refused(
                f"the prompt needs {len(prompt) + 1} tokens (with its system messages"
                + (f" and {images} image tokens" if images else "")
                + f"; older turns already left out), but the context holds {self._n_ctx} ({_CONTEXT})",
                "context_length_exceeded",
            )
        if prompt.items and isinstance(prompt.items[-1], ImageChunk):
            raise Refused(
                "the prompt ends with an image: the model needs text after it to answer "
                "(a model without a chat template sees the turn as written; put the marker before the question)"
            )

    def _encoder(self, request: protocol.Submit, keep: list[int]) -> Encode:
        """Makes the prompt of the messages kept (by index into `keep`), with their images if any."""

        tools = None if request.tools is None else json.loads(request.tools)

        def encode(chosen: list[int]) -> Prompt:
            kept = [keep[i] for i in chosen]
            messages = tuple(request.messages[i] for i in kept)
            if request.raw:
                text = "".join(content for _, content in messages)
                items: list[Item] = [*self._vocab.tokenize(text, add_special=True, parse_special=True)]
                return Prompt(items)
            if not request.images:
                return Prompt(list(self._vocab.prompt_tokens(messages, tools)))
            if self._vision is None:
                raise ImageError("image prompts need LlamaLoad(mmproj_path=...)")
            marked = tuple(
                (role, self._vision.mark(content, len(request.images[i])))
                for i, (role, content) in zip(kept, messages, strict=True)
            )
            text, parse_special = self._vocab.prompt_text(marked, tools)
            images = [image for i in kept for image in request.images[i]]
            return self._vision.tokenize(text, images, parse_special=parse_special)

        return encode


def _free_result(future: concurrent.futures.Future[Prepared]) -> None:
    if not future.cancelled() and future.exception() is None:
        future.result().prompt.free()
