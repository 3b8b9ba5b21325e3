"""flash_attention="auto" on a CPU: measured on the first load on a machine, kept on disk, read on the next."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from llama_isolate import ContextParams, LlamaLoad, LlamaParent
from llama_isolate._bench.floors import busy
from llama_isolate._worker import flash
from llama_isolate._worker.flash import FlashCache, Timing, Verdict
from llama_isolate.testing import make_tiny_model

QUICK = Timing(prompt=0.001, shallow=0.010, deep=0.012, short_batch=0.05)
SLOW_DEEP = Timing(prompt=0.001, shallow=0.009, deep=0.020, short_batch=0.10)


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    where = tmp_path / "cache"
    monkeypatch.setenv(flash.CACHE_ENV, str(where))
    return where


def entries(cache_dir: Path) -> dict[str, dict[str, object]]:
    with open(cache_dir / flash.CACHE_FILE, encoding="utf-8") as f:
        found: dict[str, dict[str, object]] = json.load(f)
        return found


def test_a_chat_turn_counts_deep_generation_and_short_batches_not_only_the_first_tokens() -> None:
    # Faster near the start, slower a few hundred tokens in: over a turn, slower.
    assert SLOW_DEEP.shallow < QUICK.shallow
    assert SLOW_DEEP.turn() > QUICK.turn()


def test_a_verdict_survives_the_cache_and_says_what_it_was_measured_on(cache_dir: Path) -> None:
    cache = FlashCache()
    verdict = Verdict(False, with_flash=SLOW_DEEP, without=QUICK, reason="measured")
    cache.put("key", verdict, "model.gguf, some CPU, 2 threads")
    again = FlashCache().get("key")
    assert again == verdict
    assert "flash attention off" in again.describe() and "at depth 384" in again.describe()
    assert entries(cache_dir)["key"]["note"] == "model.gguf, some CPU, 2 threads"
    assert FlashCache().get("another key") is None


def test_a_provisional_verdict_is_measured_again_only_after_a_while(
    cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    FlashCache().put("key", Verdict(False, reason="busy", provisional=True), "note")
    assert FlashCache().get("key") == Verdict(False, reason="busy", provisional=True)
    later = time.time() + flash.RETRY_S + 1
    monkeypatch.setattr(flash.time, "time", lambda: later)
    assert FlashCache().get("key") is None


@pytest.mark.parametrize(
    "content", ["not json", "[1, 2]", '{"key": {"on": "yes"}}', '{"key": {"on": true, "without": 3}}']
)
def test_a_damaged_cache_file_is_ignored(cache_dir: Path, content: str) -> None:
    cache_dir.mkdir()
    (cache_dir / flash.CACHE_FILE).write_text(content)
    assert FlashCache().get("key") is None
    FlashCache().put("key", Verdict(True, reason="measured"), "note")  # and replaced by the next verdict
    assert FlashCache().get("key") == Verdict(True, reason="measured")


def test_a_cache_that_cannot_be_written_costs_only_the_next_probe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocked = tmp_path / "a file"
    blocked.write_text("")
    monkeypatch.setenv(flash.CACHE_ENV, str(blocked / "cache"))  # a directory under a file cannot be made
    FlashCache().put("key", Verdict(True, reason="measured"), "note")
    assert FlashCache().get("key") is None


async def test_auto_is_measured_once_then_read_from_the_cache(tmp_path: Path, cache_dir: Path) -> None:
    load = LlamaLoad(path=make_tiny_model(tmp_path), context_params=ContextParams(n_threads=1, n_threads_batch=1))
    async with LlamaParent(load) as parent:
        first = parent.model_info
    assert first is not None and first.flash_attention is not None
    assert first.flash_attention_note.startswith(f"flash attention {'on' if first.flash_attention else 'off'}")
    kept = entries(cache_dir)
    assert len(kept) == 1
    (entry,) = kept.values()
    assert "1 threads" in str(entry["note"])
    async with LlamaParent(load) as parent:
        second = parent.model_info
    assert second is not None
    assert (second.flash_attention, second.flash_attention_note) == (first.flash_attention, first.flash_attention_note)
    assert entries(cache_dir) == kept  # read, not measured again


@pytest.mark.parametrize("setting", ["on", "off"])
async def test_an_explicit_setting_is_used_as_given_and_measures_nothing(
    tmp_path: Path, cache_dir: Path, setting: str
) -> None:
    load = LlamaLoad(path=make_tiny_model(tmp_path), context_params=ContextParams(flash_attention=setting))  # type: ignore[arg-type]
    async with LlamaParent(load) as parent:
        info = parent.model_info
    assert info is not None
    assert info.flash_attention is (setting == "on")
    assert "as asked" in info.flash_attention_note
    assert not (cache_dir / flash.CACHE_FILE).exists()


async def test_a_busy_machine_is_not_measured_at_all(tmp_path: Path, cache_dir: Path) -> None:
    # Beside two busy processes the probe used to measure first and drop its figures after: 24 s of a 25 s load.
    load = LlamaLoad(path=make_tiny_model(tmp_path), context_params=ContextParams(n_threads=2, n_threads_batch=2))
    with busy(os.cpu_count() or 2):
        async with LlamaParent(load) as parent:
            info = parent.model_info
    assert info is not None and info.flash_attention is False
    assert "busy before measuring; off for now" in info.flash_attention_note
    (entry,) = entries(cache_dir).values()
    assert entry["provisional"] is True  # measured again on a later load, once the machine is quiet
