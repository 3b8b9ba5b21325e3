"""Prompt preparation: a conversation becomes the items the engine decodes.

Rendering the chat template, tokenizing and fitting the context are quick
for text, and done when the prompt is admitted. A prompt with images is
prepared on a thread of its own instead, as soon as it arrives: decoding a
large PNG and resizing it for the projector can take seconds, and the engine
keeps stepping the other conversations (and applying stops) meanwhile.

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
from .chat import ChatTemplateError
from .fit import ContextFitter, Encode
from .prompt import ImageChunk, Item, Prompt
from .vision import ImageError, Vision
from .vocab import Vocab

logger = logging.getLogger("llama_isolate.worker")


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
    """Makes `Prepared` prompts: at once for text, on a thread for prompts with images."""

    def __init__(self, vocab: Vocab, vision: Vision | None, n_ctx: int, wake: Callable[[], None]) -> None:
        self._vocab = vocab
        self._vision = vision
        self._n_ctx = n_ctx
        self._fitter = ContextFitter(n_ctx)
        self._wake = wake
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._in_flight: dict[str, tuple[protocol.Submit, concurrent.futures.Future[Prepared]]] = {}

    def prepare(self, request: protocol.Submit) -> Prepared:
        """Prepare a prompt now; raises `Refused`."""
        try:
            prompt, dropped = self._fitter.fit(
                request.scope_key, [role for role, _ in request.messages], request.max_tokens, self._encoder(request)
            )
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
        """Prepare an image prompt on the preparation thread; `done()` hands it over later."""
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="prepare")
        future = self._pool.submit(self.prepare, request)
        self._in_flight[request.prompt_id] = (request, future)
        future.add_done_callback(lambda _: self._wake())

    @property
    def in_flight(self) -> int:
        """Image prompts being prepared."""
        return len(self._in_flight)

    def done(self) -> list[tuple[protocol.Submit, Prepared | Refused]]:
        """The prompts whose preparation finished since the last call, in the order they were started."""
        finished: list[tuple[protocol.Submit, Prepared | Refused]] = []
        for prompt_id, (request, future) in list(self._in_flight.items()):
            if future.done():
                del self._in_flight[prompt_id]
                try:
                    finished.append((request, future.result()))
                except Refused as exc:
                    finished.append((request, exc))
        return finished

    def cancel(self, prompt_id: str) -> bool:
        """Abandon a prompt being prepared (its result is freed when it comes); False if it was not."""
        entry = self._in_flight.pop(prompt_id, None)
        if entry is None:
            return False
        entry[1].add_done_callback(_free_result)
        return True

    def forget(self, scope_key: str) -> None:
        """Drop what is remembered of a conversation (how many old turns it leaves out)."""
        self._fitter.forget(scope_key)

    def close(self) -> bool:
        """Abandon every preparation and end the thread, without waiting; False if one is still running.

        A running one may be inside mtmd: the projector must not be freed under it.
        """
        running = [future for _, future in self._in_flight.values() if not future.done()]
        for prompt_id in list(self._in_flight):
            self.cancel(prompt_id)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        return not any(future.running() for future in running)

    def _check(self, prompt: Prompt) -> None:
        if len(prompt) >= self._n_ctx:
            images = prompt.image_positions()
            raise Refused(
                f"the prompt needs {len(prompt) + 1} tokens (with its system messages"
                + (f" and {images} image tokens" if images else "")
                + f"; older turns already left out), but the context holds {self._n_ctx} (ContextParams.n_ctx)",
                "context_length_exceeded",
            )
        if prompt.items and isinstance(prompt.items[-1], ImageChunk):
            raise Refused(
                "the prompt ends with an image: the model needs text after it to answer "
                "(a model without a chat template sees the turn as written; put the marker before the question)"
            )

    def _encoder(self, request: protocol.Submit) -> Encode:
        """Makes the prompt of the messages kept (by index), with their images if any."""

        tools = None if request.tools is None else json.loads(request.tools)

        def encode(kept: list[int]) -> Prompt:
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
