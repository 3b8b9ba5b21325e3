"""init() failures: a clear typed error, nothing left running, nothing hanging."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import psutil
import pytest

from llama_isolate import (
    ContextParams,
    LlamaInvalidMmproj,
    LlamaInvalidModel,
    LlamaLoad,
    LlamaLoadError,
    LlamaLoadTimeout,
    LlamaModelNotFound,
    LlamaOutOfMemory,
    LlamaParent,
    LlamaStatus,
    LlamaStatusError,
    LlamaWorkerDied,
    LlamaWorkerDiedOnLoad,
    default_init_timeout,
)

from ..helpers.models import greedy_load


async def failed_init(load: LlamaLoad, **kwargs: float) -> tuple[LlamaParent, LlamaLoadError]:
    parent = LlamaParent(load)
    with pytest.raises(LlamaLoadError) as info:
        await parent.init(**kwargs)
    assert parent.status is LlamaStatus.ERROR
    assert parent.worker_pid is None
    assert not psutil.Process().children(recursive=True), "a worker process was left behind"
    with pytest.raises(LlamaStatusError, match="ERROR"):
        await parent.send_prompt("hi")
    await parent.dispose()
    return parent, info.value


async def test_missing_model_file(tmp_path: Path) -> None:
    _, error = await failed_init(LlamaLoad(path=tmp_path / "absent.gguf"))
    assert isinstance(error, LlamaModelNotFound)
    assert "absent.gguf" in str(error)


async def test_a_file_that_is_not_gguf(tmp_path: Path) -> None:
    fake = tmp_path / "notes.gguf"
    fake.write_text("just some notes, not a model\n")
    _, error = await failed_init(LlamaLoad(path=fake))
    assert isinstance(error, LlamaInvalidModel)
    assert "not a GGUF file" in str(error)


async def test_a_model_path_that_is_a_directory(tmp_path: Path) -> None:
    _, error = await failed_init(LlamaLoad(path=tmp_path))
    assert isinstance(error, LlamaInvalidModel)
    assert "directory" in str(error)


async def test_a_truncated_gguf(tmp_path: Path, model_path: Path) -> None:
    truncated = tmp_path / "truncated.gguf"
    with open(model_path, "rb") as src:
        truncated.write_bytes(src.read(3_000_000))
    _, error = await failed_init(LlamaLoad(path=truncated))
    assert isinstance(error, LlamaInvalidModel)
    assert "could not load" in str(error)


async def test_a_chat_template_override_that_does_not_compile(model_path: Path) -> None:
    _, error = await failed_init(LlamaLoad(path=model_path, chat_template="{% for m in %}"))
    assert "chat template" in str(error)


async def test_a_load_past_its_timeout_is_killed(model_path: Path) -> None:
    _, error = await failed_init(greedy_load(model_path), timeout=0.001)
    assert isinstance(error, LlamaLoadTimeout)
    assert "timeout" in str(error)


async def test_a_worker_killed_while_loading(model_path: Path) -> None:
    parent = LlamaParent(greedy_load(model_path))

    def kill_once_loading(_: float) -> None:
        pid = parent.worker_pid
        if pid is not None:
            os.kill(pid, signal.SIGKILL)

    with pytest.raises(LlamaWorkerDiedOnLoad, match="SIGKILL") as info:
        await parent.init(on_progress=kill_once_loading)
    assert isinstance(info.value, LlamaWorkerDied)
    assert parent.status is LlamaStatus.ERROR
    assert not psutil.Process().children(recursive=True)


async def test_a_failed_init_can_be_retried_with_restart(model_path: Path) -> None:
    parent = LlamaParent(greedy_load(model_path, n_ctx=1024))
    with pytest.raises(LlamaLoadTimeout):
        await parent.init(timeout=0.001)
    await parent.restart()
    try:
        pid = await parent.send_prompt("Hello", max_tokens=3)
        assert (await parent.wait_for_completion(pid)).success
    finally:
        await parent.dispose()


def test_bad_parent_options_are_refused_at_construction(model_path: Path) -> None:
    with pytest.raises(ValueError, match="max_queue"):
        LlamaParent(LlamaLoad(path=model_path), max_queue=0)
    with pytest.raises(TypeError, match="LlamaLoad"):
        LlamaParent(str(model_path))  # type: ignore[arg-type]


async def test_a_context_too_large_for_memory(model_path: Path) -> None:
    # 4M tokens of KV cache for this model is about 90 GiB: more than the machine has.
    _, error = await failed_init(LlamaLoad(path=model_path, context_params=ContextParams(n_ctx=1 << 22)))
    assert isinstance(error, LlamaOutOfMemory)
    assert "memory" in str(error)


async def test_an_mmproj_that_is_not_a_projector(model_path: Path, tmp_path: Path) -> None:
    # The text model itself is a valid GGUF, but not a vision projector.
    _, error = await failed_init(LlamaLoad(path=model_path, mmproj_path=model_path))
    assert isinstance(error, LlamaInvalidMmproj)
    assert "mmproj" in str(error)
    text = tmp_path / "proj.gguf"
    text.write_text("not a projector")
    _, error = await failed_init(LlamaLoad(path=model_path, mmproj_path=text))
    assert isinstance(error, LlamaInvalidMmproj)
    assert "not a GGUF file" in str(error)
    _, error = await failed_init(LlamaLoad(path=model_path, mmproj_path=tmp_path / "absent.gguf"))
    assert isinstance(error, LlamaModelNotFound)
    assert "mmproj file not found" in str(error)


def test_the_default_init_timeout_grows_with_the_model(tmp_path: Path) -> None:
    big = tmp_path / "big.gguf"
    with open(big, "wb") as f:
        f.truncate(4 * 2**30)  # a sparse 4 GiB file
    assert default_init_timeout(tmp_path / "absent.gguf") == 60.0
    assert default_init_timeout(big) == 60.0 + 4 * 30.0
