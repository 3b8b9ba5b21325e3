"""Image prompts through mtmd, with the generated tiny vision model."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from llama_isolate import (
    MEDIA_MARKER,
    CompletionEvent,
    ContextParams,
    LlamaFeatureNotEnabled,
    LlamaImage,
    LlamaLoad,
    LlamaParent,
    LlamaScope,
    SamplerParams,
)
from llama_isolate.testing import TinyVisionShape, make_tiny_vlm

from ..helpers.models import GREEDY, vlm_load
from ..helpers.pictures import BLUE, RED, picture

IMAGE_TOKENS = TinyVisionShape().n_patches


@pytest.fixture
async def vlm(tiny_vlm: tuple[Path, Path]) -> AsyncIterator[LlamaParent]:
    async with LlamaParent(vlm_load(tiny_vlm)) as parent:
        yield parent


async def ask(scope: LlamaScope, prompt: str, images: list[LlamaImage] | None = None) -> CompletionEvent:
    if images:
        pid = await scope.send_prompt_with_images(prompt, images, max_tokens=8)
    else:
        pid = await scope.send_prompt(prompt, max_tokens=8)
    return await scope.parent.wait_for_completion(pid)


async def test_the_image_reaches_the_model(vlm: LlamaParent) -> None:
    first = await ask(vlm.get_scope(), "What is this?", [RED])
    again = await ask(vlm.get_scope(), "What is this?", [RED])
    other = await ask(vlm.get_scope(), "What is this?", [BLUE])
    assert first.success and again.success and other.success
    assert first.text == again.text  # greedy: the same image, the same answer
    assert first.text != other.text  # a different image, a different answer
    assert first.prompt_tokens > IMAGE_TOKENS  # the image's tokens were processed


async def test_a_follow_up_about_the_image_does_not_encode_it_again(vlm: LlamaParent) -> None:
    scope = vlm.get_scope()
    first = await ask(scope, "What is this?", [RED])
    follow = await ask(scope, "And its color?")
    assert follow.success
    # The image and the first turn came from the KV cache; only the new text
    # (and the first reply, which was generated, not read) was processed.
    assert follow.cached_tokens >= first.prompt_tokens
    assert follow.prompt_tokens <= len(" And its color?") + first.completion_tokens + 2
    assert scope.messages[0]["images"] == (RED,)
    assert scope.messages[0]["content"] == f"{MEDIA_MARKER}\nWhat is this?"


async def test_an_image_conversation_survives_eviction_without_reencoding(tiny_vlm: tuple[Path, Path]) -> None:
    async with LlamaParent(vlm_load(tiny_vlm)) as parent:  # one slot
        looking, other = parent.get_scope(), parent.get_scope()
        first = await ask(looking, "What is this?", [BLUE])
        await ask(other, "Something else entirely.")
        follow = await ask(looking, "Tell me more.")
    assert follow.cached_tokens >= first.prompt_tokens


async def test_png_jpeg_and_bmp_are_read(vlm: LlamaParent) -> None:
    for fmt in ("PNG", "JPEG", "BMP"):
        event = await ask(vlm.get_scope(), "What is this?", [picture((30, 160, 60), fmt)])
        assert event.success, (fmt, event.error)
        assert event.prompt_tokens > IMAGE_TOKENS


async def test_images_go_at_their_markers_and_a_mismatch_is_refused(vlm: LlamaParent) -> None:
    two = await ask(vlm.get_scope(), f"Compare {MEDIA_MARKER} with {MEDIA_MARKER}.", [RED, BLUE])
    swapped = await ask(vlm.get_scope(), f"Compare {MEDIA_MARKER} with {MEDIA_MARKER}.", [BLUE, RED])
    assert two.success and swapped.success
    assert two.prompt_tokens > 2 * IMAGE_TOKENS
    assert two.text != swapped.text  # the order of the images matters
    with pytest.raises(ValueError, match="2 image markers"):
        await vlm.send_prompt_with_images(f"{MEDIA_MARKER} and {MEDIA_MARKER}", [RED])


async def test_a_corrupt_image_fails_only_its_prompt_naming_it(vlm: LlamaParent) -> None:
    scope = vlm.get_scope()
    broken = await ask(scope, "What is this?", [LlamaImage.from_bytes(b"\x89PNG not really", name="broken.png")])
    assert not broken.success
    assert broken.error is not None and "broken.png" in broken.error
    assert scope.messages == []
    assert (await ask(scope, "What is this?", [RED])).success


async def test_unreadable_image_files_are_refused_when_read(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        LlamaImage.from_file(tmp_path / "missing.png")
    with pytest.raises(ValueError, match="empty"):
        LlamaImage.from_bytes(b"", name="empty.png")


async def test_too_many_image_tokens_for_the_context_is_a_clear_error(tiny_vlm: tuple[Path, Path]) -> None:
    model, mmproj = tiny_vlm
    load = LlamaLoad(path=model, mmproj_path=mmproj, sampler_params=GREEDY, context_params=ContextParams(n_ctx=64))
    async with LlamaParent(load) as parent:
        event = await ask(parent.get_scope(), "All of them?", [RED, BLUE, RED, BLUE, RED])
        after = await ask(parent.get_scope(), "Just one.", [RED])
    assert not event.success
    assert event.error is not None
    assert "image tokens" in event.error and "holds 64" in event.error
    assert after.success


async def test_image_prompts_need_an_mmproj(model_path: Path) -> None:
    async with LlamaParent(LlamaLoad(path=model_path)) as parent:
        with pytest.raises(LlamaFeatureNotEnabled, match="mmproj_path"):
            await parent.send_prompt_with_images("What is this?", [RED])


async def test_an_image_scope_decodes_beside_a_text_scope(tiny_vlm: tuple[Path, Path]) -> None:
    async with LlamaParent(vlm_load(tiny_vlm)) as alone:
        expected = await ask(alone.get_scope(), "What is this?", [RED])
    async with LlamaParent(vlm_load(tiny_vlm, n_parallel=2)) as parent:
        talker = await parent.get_scope().send_prompt("Go on and on.", max_tokens=40)
        looked = await ask(parent.get_scope(), "What is this?", [RED])
        assert (await parent.wait_for_completion(talker)).success
    assert looked.text == expected.text


async def test_a_saved_image_conversation_continues_elsewhere(tiny_vlm: tuple[Path, Path]) -> None:
    async with LlamaParent(vlm_load(tiny_vlm)) as first:
        scope = first.get_scope()
        await ask(scope, "What is this?", [BLUE])
        data = await scope.save_state()
        expected = await ask(scope, "More?")
    async with LlamaParent(vlm_load(tiny_vlm)) as second:
        restored = second.get_scope()
        await restored.load_state(data)
        assert restored.messages[0]["images"] == (BLUE,)
        again = await ask(restored, "More?")
    assert again.text == expected.text
    assert again.cached_tokens > IMAGE_TOKENS  # the restored KV held the image


def test_tiny_models_are_deterministic_for_a_seed(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for d in (a, b, c):
        d.mkdir()
    first = make_tiny_vlm(a, seed=3)
    second = make_tiny_vlm(b, seed=3)
    other = make_tiny_vlm(c, seed=4)
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]
    assert first[1].read_bytes() != other[1].read_bytes()
    assert first[0].stat().st_size < 4 * 2**20


async def test_the_tiny_text_model_runs_the_whole_path(tmp_path: Path) -> None:
    from llama_isolate.testing import make_tiny_model

    load = LlamaLoad(path=make_tiny_model(tmp_path), sampler_params=SamplerParams(greedy=True))
    async with LlamaParent(load) as parent:
        tokens: list[str] = []
        parent.stream.listen(tokens.append)
        first = await parent.wait_for_completion(await parent.get_scope().send_prompt("hello", max_tokens=6))
        again = await parent.wait_for_completion(await parent.get_scope().send_prompt("hello", max_tokens=6))
    assert first.success and first.completion_tokens > 0
    assert first.text == again.text
    assert "".join(tokens) == first.text + again.text
