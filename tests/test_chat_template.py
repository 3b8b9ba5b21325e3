"""The model's own chat template, an override, and a template refusing a turn."""

from __future__ import annotations

from pathlib import Path

from llama_isolate import LlamaLoad, LlamaParent, ModelParams, SamplerParams

from .conftest import greedy_load

# Plain "Q:/A:" turns: far fewer tokens than the model's ChatML with its system prompt.
QA_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}"
    "{% if m['content'] == 'forbidden' %}{{ raise_exception('forbidden word') }}{% endif %}"
    "Q: {{ m['content'] }}\n{% else %}A: {{ m['content'] }}\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}A:{% endif %}"
)


async def prompt_tokens(parent: LlamaParent, text: str) -> int:
    event = await parent.wait_for_completion(await parent.get_scope().send_prompt(text, max_tokens=2))
    assert event.success, event.error
    return event.prompt_tokens


async def test_the_override_replaces_the_models_template(model_path: Path) -> None:
    greedy = SamplerParams(greedy=True)
    async with LlamaParent(LlamaLoad(path=model_path, sampler_params=greedy)) as own:
        own_count = await prompt_tokens(own, "Hello there")
    async with LlamaParent(LlamaLoad(path=model_path, sampler_params=greedy, chat_template=QA_TEMPLATE)) as qa:
        qa_count = await prompt_tokens(qa, "Hello there")
        refused = await qa.wait_for_completion(await qa.send_prompt("forbidden"))
        after = await qa.wait_for_completion(await qa.send_prompt("allowed", max_tokens=2))
    # ChatML with SmolLM's default system prompt is ~20 tokens more than "Q: Hello there\nA:".
    assert own_count > qa_count + 15
    assert qa_count < 10
    assert not refused.success
    assert refused.error is not None and "forbidden word" in refused.error
    assert after.success


async def test_a_vocab_only_load_cannot_generate_but_says_why(model_path: Path) -> None:
    async with LlamaParent(LlamaLoad(path=model_path, model_params=ModelParams(vocab_only=True))) as parent:
        event = await parent.wait_for_completion(await parent.send_prompt("hi"))
    assert not event.success
    assert event.error is not None and "vocab_only" in event.error


async def test_a_raw_prompt_is_completed_as_written_without_the_template(model_path: Path) -> None:
    async with LlamaParent(greedy_load(model_path, n_ctx=512)) as parent:
        chat = await parent.wait_for_completion(await parent.send_prompt("The capital of France is", max_tokens=4))
        scope = parent.get_scope()
        raw = await parent.wait_for_completion(
            await scope.send_prompt("The capital of France is", max_tokens=4, raw=True)
        )
    # The chat prompt is wrapped in the template (system prompt, role markers); the raw one is not.
    assert raw.prompt_tokens + raw.cached_tokens < 10 < chat.prompt_tokens + chat.cached_tokens
    assert raw.success and raw.completion_tokens > 0
