"""Text <-> tokens for one model: tokenizing, pieces, and chat prompts."""

from __future__ import annotations

import ctypes
from typing import Any

import llama_cpp as C

from .chat import ChatFormatter

_ATTR_CONTROL = 1 << 3  # llama.cpp's LLAMA_TOKEN_ATTR_CONTROL
_ATTR_USER_DEFINED = 1 << 4


class Vocab:
    """The model's vocabulary and chat formatting."""

    def __init__(self, model: int, chat_template: str | None) -> None:
        self.handle = C.llama_model_get_vocab(model)
        self.n_tokens = int(C.llama_vocab_n_tokens(self.handle))
        self._pieces: dict[int, bytes] = {}
        self._longest: int | None = None
        if chat_template is None:
            own = C.llama_model_chat_template(model, None)
            chat_template = own.decode("utf-8", "replace") if own else None
        self._bos = self.token_text(C.llama_vocab_bos(self.handle))
        self.chat = ChatFormatter(
            chat_template, bos_token=self._bos, eos_token=self.token_text(C.llama_vocab_eos(self.handle))
        )

    def is_end_of_generation(self, token: int) -> bool:
        return bool(C.llama_vocab_is_eog(self.handle, token))

    def prompt_text(self, messages: tuple[tuple[str, str], ...], tools: list[Any] | None = None) -> tuple[str, bool]:
        """The conversation formatted for the model, and whether special tokens in it are parsed.

        Without a template the text is the turns' contents, and a user's
        "<s>" stays text; the BOS a template writes is dropped, because the
        tokenizer adds it.
        """
        text = self.chat.render(messages, tools)
        if not self.chat.has_template:
            return text, False
        return self._without_bos(text), True

    def prompt_tokens(self, messages: tuple[tuple[str, str], ...], tools: list[Any] | None = None) -> list[int]:
        """The tokens of a conversation, formatted for the model, ready for its reply.

        Only the template's own text is parsed for special tokens; what came
        from the messages' contents is tokenized as plain text (`render_spans`).
        """
        if not self.chat.has_template:
            text, _ = self.prompt_text(messages, tools)
            return self.tokenize(text, add_special=True, parse_special=False)
        tokens: list[int] = []
        for i, (text, content) in enumerate(self.chat.render_spans(messages, tools)):
            piece = self._without_bos(text) if i == 0 else text
            tokens += self.tokenize(piece, add_special=i == 0, parse_special=not content)
        return tokens

    def _without_bos(self, text: str) -> str:
        if self._bos and C.llama_vocab_get_add_bos(self.handle) and text.startswith(self._bos):
            return text[len(self._bos) :]
        return text

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        data = text.encode("utf-8")
        capacity = len(data) + 8
        while True:
            buf = (C.llama_token * capacity)()
            n = C.llama_tokenize(self.handle, data, len(data), buf, capacity, add_special, parse_special)
            if n >= 0:
                return list(buf[:n])
            capacity = -n

    def piece(self, token: int) -> bytes:
        """The bytes a token stands for (cached: the hot path calls this per token)."""
        piece = self._pieces.get(token)
        if piece is None:
            buf = ctypes.create_string_buffer(64)
            n = C.llama_token_to_piece(self.handle, token, buf, len(buf), 0, False)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = C.llama_token_to_piece(self.handle, token, buf, len(buf), 0, False)
            piece = self._pieces[token] = buf.raw[:n]
        return piece

    def max_piece_bytes(self) -> int:
        """The most bytes one token stands for (worked out once: one call per token of the vocabulary)."""
        if self._longest is None:
            buf = ctypes.create_string_buffer(256)
            longest = 1
            for token in range(self.n_tokens):
                n = C.llama_token_to_piece(self.handle, token, buf, len(buf), 0, True)
                longest = max(longest, abs(int(n)))
            self._longest = longest
        return self._longest

    def special_texts(self) -> list[str]:
        """The texts of the special tokens (control and user-defined) that parsing a text looks for."""
        wanted = _ATTR_CONTROL | _ATTR_USER_DEFINED
        found = []
        for token in range(self.n_tokens):
            if int(C.llama_vocab_get_attr(self.handle, token)) & wanted:
                text = self.token_text(token)
                if text:
                    found.append(text)
        return found

    def token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return (C.llama_vocab_get_text(self.handle, token) or b"").decode("utf-8", "replace")
