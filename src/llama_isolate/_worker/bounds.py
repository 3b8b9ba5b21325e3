"""Cheap refusals: what can be told about a prompt before it is rendered or tokenized.

Tokenizing is not free and cannot be interrupted: 8 MiB of text took 9.5 s,
and llama.cpp's search for special tokens is quadratic in how many a text
holds (40,000 ``<|im_end|>`` took 7 s). A prompt that cannot fit the context
should not cost that to find out. So, before anything else:

- **bytes**: no token of a vocabulary covers more than its longest piece (some
  tens of bytes; computed once, when a prompt is first big enough to ask).
  Text of more bytes than ``n_ctx`` times that cannot fit, whatever it says;
- **messages**: at most `LlamaLoad.max_messages`;
- **special tokens** in a raw prompt (which is parsed for them): more
  occurrences of their texts than the context has room for cannot fit either,
  and more than `MAX_SPECIAL` are refused whatever the context: llama.cpp's
  search for them is quadratic (8,192 between words took 0.8 s to tokenize,
  16,384 took 3.4 s and 32,768 took 15 s).

A conversation that may lose its oldest turns (`Submit.trim`) is first cut
down by the same measures, oldest exchange first, so that the exact fitting
(`fit.ContextFitter`) only ever tokenizes what could fit.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from .fit import exchanges, kept
from .vocab import Vocab

MAX_SPECIAL = 8192
"""The most special tokens' texts a raw prompt may hold (see the module's docstring)."""


class TooBig(Exception):
    """The prompt cannot fit; the message says by which measure."""


class PromptBounds:
    """The bounds of prompts for one context size.

    Example::

        bounds = PromptBounds(vocab, n_ctx=4096, max_messages=4096)
        keep = bounds.messages_to_keep(request.messages, raw=False, trim=True)  # raises TooBig
    """

    def __init__(self, vocab: Vocab, *, n_ctx: int, max_messages: int) -> None:
        self._vocab = vocab
        self._n_ctx = n_ctx
        self._max_messages = max_messages
        self._special: re.Pattern[str] | None = None

    def messages_to_keep(self, messages: Sequence[tuple[str, str]], *, raw: bool, trim: bool) -> list[int]:
        """Indexes of the messages that may still fit, oldest exchanges cut first when `trim`; raises `TooBig`."""
        roles = [role for role, _ in messages]
        sizes = [len(content.encode("utf-8", "surrogatepass")) for _, content in messages]
        keep = list(range(len(messages)))
        if trim:
            groups = exchanges(roles)
            count, size, cut = len(messages), sum(sizes), 0
            while cut < len(groups) and self._over(count, size):  # one pass, oldest exchange first
                count -= len(groups[cut])
                size -= sum(sizes[i] for i in groups[cut])
                cut += 1
            if cut:
                keep = kept(len(messages), groups, cut)
        if len(keep) > self._max_messages:
            raise TooBig(
                f"the conversation has {len(keep)} messages"
                + (" that cannot be left out" if trim else "")
                + f"; at most {self._max_messages} are read (LlamaLoad.max_messages)"
            )
        size = sum(sizes[i] for i in keep)
        if size > self._byte_limit(size):
            raise TooBig(
                f"the prompt is {size} bytes of text; no token of this model covers more than "
                f"{self._vocab.max_piece_bytes()} bytes, so it needs more than the {self._n_ctx} tokens the context "
                "holds"
            )
        if raw:
            self._check_special("".join(messages[i][1] for i in keep))
        return keep

    def check_text(self, text: str, limit: int) -> None:
        """Raise `TooBig` if `text` (tokenized without special tokens) cannot be `limit` tokens or fewer."""
        size = len(text.encode("utf-8", "surrogatepass"))
        if size > limit * 4 and size > limit * self._vocab.max_piece_bytes():
            raise TooBig(f"the text is {size} bytes, more than {limit} tokens of this model can hold")

    def _over(self, count: int, size: int) -> bool:
        return count > self._max_messages or size > self._byte_limit(size)

    def _byte_limit(self, size: int) -> int:
        # A token covers 4 bytes of ordinary text or so: the vocabulary's longest piece is only worked out (about
        # 0.1 s for a 50k vocabulary) for a prompt big enough that it could matter.
        if size <= self._n_ctx * 4:
            return self._n_ctx * 4
        return self._n_ctx * self._vocab.max_piece_bytes()

    def _check_special(self, text: str) -> None:
        if self._special is None:
            texts = sorted(self._vocab.special_texts(), key=len, reverse=True)
            self._special = re.compile("|".join(re.escape(t) for t in texts)) if texts else re.compile("(?!)")
        limit = min(self._n_ctx, MAX_SPECIAL)
        for count, _ in enumerate(self._special.finditer(text), start=1):
            if count > limit:
                why = "the context holds" if limit == self._n_ctx else "a raw prompt may hold (tokenizing them is slow)"
                raise TooBig(
                    f"the prompt holds more than {limit} special tokens' texts (such as <|im_end|>), more than {why}"
                )
