"""Generated text that has tripped C code before, and a chat template that refuses a role: for the fuzz tests."""

from __future__ import annotations

from hypothesis import strategies as st

from llama_isolate import MEDIA_MARKER

# Text that has tripped C code before: lone surrogates, NULs, the image marker, a stray BOS, long runs.
nasty = st.sampled_from(["\ud800", "\udfff", "\x00", MEDIA_MARKER, "<s>", "</s>", "\u202e", "🦙", "\r\n", "a" * 300])


class Foreign(str):
    """A str of the caller's own class (an enum member is one): pickled by its class, which the worker refuses."""


class ForeignFloat(float):
    """A float of the caller's own class (numpy's float64 is one)."""


plain_texts = st.lists(st.one_of(st.text(max_size=20), nasty), max_size=6).map("".join)
texts = st.one_of(plain_texts, plain_texts.map(Foreign))

# A chat template that refuses a role, as some models' templates do, to reach the template's failures too.
TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'tool' %}{{ raise_exception('no tool turns') }}{% endif %}"
    "<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
