"""The second real model, Gemma 3 270M: a base model with no chat template."""

from __future__ import annotations

from pathlib import Path

from llama_isolate import LlamaParent

from ..helpers.models import greedy_load


async def test_gemma_generates_as_plain_text_completion_of_the_conversation(gemma_path: Path) -> None:
    async with LlamaParent(greedy_load(gemma_path, n_ctx=1024)) as parent:
        assert parent.model_info is not None
        assert parent.model_info.has_chat_template is False
        assert parent.model_info.n_embd == 640
        tokens: list[str] = []
        parent.stream.listen(tokens.append)
        first = await parent.wait_for_completion(await parent.send_prompt("The capital of France is", max_tokens=8))
        second = await parent.wait_for_completion(await parent.send_prompt(" The capital of Italy is", max_tokens=8))
        assert first.success and second.success
        assert first.completion_tokens == 8
        assert "".join(tokens) == first.text + second.text
        # Without a template the prompt is the text itself: BOS + 5 tokens.
        assert first.prompt_tokens == 6
        # The second prompt continues the first exchange's text, which is
        # still in the KV cache: only its own tokens are processed.
        assert second.cached_tokens >= first.prompt_tokens + first.completion_tokens - 1
        assert second.prompt_tokens <= 8
        assert parent.messages[1] == {"role": "assistant", "content": first.text}


async def test_gemma_greedy_output_is_reproducible(gemma_path: Path) -> None:
    async with LlamaParent(greedy_load(gemma_path, n_ctx=512)) as parent:
        texts = []
        for _ in range(2):
            scope = parent.get_scope()
            event = await parent.wait_for_completion(await scope.send_prompt("Once upon a time", max_tokens=10))
            texts.append(event.text)
        assert texts[0] == texts[1]
        assert texts[0].strip()
