"""The engine decodes with as many threads as the other processes leave CPUs free."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from llama_isolate import ContextParams, LlamaLoad, SamplerParams
from llama_isolate import _protocol as protocol
from llama_isolate._bench.floors import busy
from llama_isolate._worker import threads
from llama_isolate._worker.abort import AbortFlag
from llama_isolate._worker.engine import Engine
from llama_isolate._worker.threads import DECODE_ABORTED, ThreadTuner, threads_for


def test_threads_are_the_cpus_the_others_leave_free() -> None:
    assert threads_for(0.0, cpus=2, ceiling=2) == 2
    assert threads_for(0.3, cpus=2, ceiling=2) == 2  # a little background work costs no thread
    assert threads_for(1.0, cpus=2, ceiling=2) == 1
    assert threads_for(0.7, cpus=2, ceiling=2) == 1  # a busy process that got only part of its CPU
    assert threads_for(2.0, cpus=2, ceiling=2) == 1  # never fewer than one
    assert threads_for(1.0, cpus=8, ceiling=4) == 4  # never more than asked for
    assert threads_for(5.0, cpus=8, ceiling=8) == 3


class Woken:
    """An engine's `wake`: what the worker's loop waits on while a prompt is prepared off the engine's thread."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def __call__(self) -> None:
        self.event.set()


def engine_of(load: LlamaLoad) -> tuple[Engine, Woken]:
    woken = Woken()
    return Engine(load, lambda _: None, wake=woken), woken


def answer(engine: Engine, woken: Woken, tokens: int = 48) -> None:
    """Run one prompt to its end, as the worker's loop does."""
    engine.submit(
        protocol.Submit("p", "s", (("user", "Write a story about the sea."),), SamplerParams(greedy=True), tokens)
    )
    while engine.busy or engine.preparing:
        if not engine.busy:
            assert woken.event.wait(60), "the prompt's preparation never ended"
            woken.event.clear()
        engine.step()


class SimulatedNeighbours:
    """Stands in for /proc/stat: the machine is as busy as this process plus `cpus` others (set by the test)."""

    def __init__(self) -> None:
        self.cpus = 0.0
        self._busy = 0.0
        self._last = time.monotonic()

    def __call__(self) -> float:
        now = time.monotonic()
        self._busy += self.cpus * (now - self._last)
        self._last = now
        return self._busy + time.process_time()


def test_the_engine_uses_fewer_threads_while_others_keep_a_cpu_busy_and_all_again_after(
    model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The machine's load is simulated, so that what else really runs (a busy laptop, CI) changes nothing here.
    neighbours = SimulatedNeighbours()
    monkeypatch.setattr(threads, "_machine_busy", neighbours)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    load = LlamaLoad(path=model_path, context_params=ContextParams(n_ctx=512, n_threads=2, n_threads_batch=2))
    engine, woken = engine_of(load)
    try:
        answer(engine, woken)
        assert engine.threads == 2
        neighbours.cpus = 1.0
        answer(engine, woken)
        assert engine.threads == 1
        neighbours.cpus = 0.0
        answer(engine, woken)
        assert engine.threads == 2
    finally:
        engine.close()


WATCH_S = 0.02


@contextlib.contextmanager
def watched() -> Iterator[list[threads.Reading]]:
    """Readings of the machine every `WATCH_S` while the block runs (another process may start meanwhile)."""
    readings = [threads.Reading.now()]
    done = threading.Event()

    def watch() -> None:
        while not done.wait(WATCH_S):
            readings.append(threads.Reading.now())

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield readings
    finally:
        done.set()
        watcher.join()
        readings.append(threads.Reading.now())


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two CPUs")
def test_a_real_busy_process_is_seen_and_its_end_too_when_nothing_else_runs(model_path: Path) -> None:
    """The same with real processes and /proc/stat. Beside a busy process per spare CPU the engine is down to one
    thread whatever else runs; back to all of them afterwards only if the rest of the machine was quiet meanwhile
    (measured: on a busy laptop or CI machine, one thread is then right)."""
    others = (os.cpu_count() or 2) - 1
    load = LlamaLoad(path=model_path, context_params=ContextParams(n_ctx=512, n_threads=2, n_threads_batch=2))
    engine, woken = engine_of(load)
    try:
        answer(engine, woken)
        with busy(others):
            answer(engine, woken)
            assert engine.threads == 1
        with watched() as readings:
            answer(engine, woken)
        # The tuner decides on its last WINDOW_S: all of them was quiet only if every such window was.
        step = max(1, round(threads.WINDOW_S / WATCH_S))
        windows = [threads.others_cpu(a, b) for a, b in zip(readings, readings[step:], strict=False)]
        if windows and max(windows) < 0.3:
            assert engine.threads == 2
    finally:
        engine.close()


def test_fixed_threads_stay_fixed(model_path: Path) -> None:
    context = ContextParams(n_ctx=512, n_threads=2, n_threads_batch=2, adapt_threads=False)
    engine, woken = engine_of(LlamaLoad(path=model_path, context_params=context))
    try:
        with busy((os.cpu_count() or 2) - 1):
            answer(engine, woken, tokens=4)
            assert engine.threads == 2
    finally:
        engine.close()


def test_embeddings_too_use_fewer_threads_while_others_keep_a_cpu_busy(
    model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    neighbours = SimulatedNeighbours()
    monkeypatch.setattr(threads, "_machine_busy", neighbours)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    context = ContextParams(n_ctx=512, n_threads=2, n_threads_batch=2, embeddings=True)
    engine, _ = engine_of(LlamaLoad(path=model_path, context_params=context))
    text = "A sentence to embed, long enough that its decode takes a while. " * 6
    try:
        engine.embed(text, True)
        assert engine.threads == 2
        neighbours.cpus = 1.0
        for _ in range(500):  # until the watch thread has seen the others (a reading takes 50-100 ms)
            engine.embed(text, True)
            if engine.threads == 1:
                break
        assert engine.threads == 1
    finally:
        engine.close()


def test_a_decode_the_tuner_cut_short_is_redone_and_a_stop_is_not() -> None:
    tuner = ThreadTuner(0, n_threads=2, n_threads_batch=2, adaptive=False, abort=AbortFlag())
    codes = iter([DECODE_ABORTED, DECODE_ABORTED, 0])

    def cut_then_done() -> int:
        code = next(codes)
        tuner.cut = code == DECODE_ABORTED  # as the watch thread does when it aborts a decode
        return code

    assert tuner.run(cut_then_done) == 0 and next(codes, None) is None  # redone until it ran through
    assert tuner.run(lambda: DECODE_ABORTED) == DECODE_ABORTED  # a stop's abort: not redone here
