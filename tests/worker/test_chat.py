"""Chat formatting, without a model."""

from __future__ import annotations

import pytest

from llama_isolate._worker.chat import ChatFormatter, ChatTemplateError

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_a_template_renders_the_turns_and_opens_the_assistant_turn() -> None:
    chat = ChatFormatter(CHATML, bos_token="<s>", eos_token="</s>")
    text = chat.render([("user", "hi"), ("assistant", "hello"), ("user", "bye")])
    assert text == (
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>\n"
        "<|im_start|>user\nbye<|im_end|>\n<|im_start|>assistant\n"
    )


def test_without_a_template_the_conversation_is_plain_continuous_text() -> None:
    chat = ChatFormatter(None, bos_token="<bos>", eos_token="<eos>")
    assert not chat.has_template
    assert chat.render([("user", "The sky is"), ("assistant", " blue."), ("user", " Grass is")]) == (
        "The sky is blue. Grass is"
    )


def test_a_template_can_refuse_a_conversation_with_raise_exception() -> None:
    chat = ChatFormatter("{{ raise_exception('no system role') }}", bos_token="", eos_token="")
    with pytest.raises(ChatTemplateError, match="no system role"):
        chat.render([("user", "hi")])


def test_a_template_that_does_not_compile_is_a_clear_error() -> None:
    with pytest.raises(ChatTemplateError, match="does not compile"):
        ChatFormatter("{% for %}", bos_token="", eos_token="")


def test_templates_run_sandboxed() -> None:
    chat = ChatFormatter("{{ messages.__class__.__mro__ }}", bos_token="", eos_token="")
    with pytest.raises(ChatTemplateError):
        chat.render([("user", "hi")])
