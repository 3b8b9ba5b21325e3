"""SyncLlamaParent: the blocking facade, in a plain script and inside a thread."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from llama_isolate import LlamaStatus, SyncLlamaParent

from ..helpers.models import greedy_load

SCRIPT = """
from llama_isolate import LlamaLoad, SamplerParams, SyncLlamaParent, default_model_path

tokens = []
with SyncLlamaParent(LlamaLoad(path=default_model_path(), sampler_params=SamplerParams(greedy=True))) as parent:
    parent.stream.listen(tokens.append)
    event = parent.wait_for_completion(parent.send_prompt("Say hi.", max_tokens=6))
print("".join(tokens) == event.text, event.success, parent.status.value)
"""


def test_a_plain_script_without_an_event_loop() -> None:
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "True", "disposed"]


def test_inside_a_thread_with_scopes_and_blocking_iteration(model_path: Path) -> None:
    outcome: dict[str, object] = {}

    def work() -> None:
        with SyncLlamaParent(greedy_load(model_path, n_ctx=1024)) as parent:
            scope = parent.get_scope()
            callback_threads: set[str] = set()
            scope.stream.listen(lambda _: callback_threads.add(threading.current_thread().name))
            pid = scope.send_prompt("Name three fruits.", max_tokens=12)
            pieces = []
            for piece in scope.stream:  # blocks per token; ends when the scope is disposed
                pieces.append(piece)
                if "".join(pieces) == scope.wait_for_completion(pid).text:
                    break
            outcome.update(
                text=scope.wait_for_completion(pid).text,
                pieces="".join(pieces),
                messages=list(scope.messages),
                threads=callback_threads,
                status=parent.status,
            )
            scope.dispose()
        outcome["after"] = parent.status

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(120)
    assert not thread.is_alive()
    assert outcome["pieces"] == outcome["text"]
    assert len(outcome["messages"]) == 2  # type: ignore[arg-type]
    assert outcome["threads"] == {"llama-isolate-loop"}  # callbacks run on the facade's loop thread
    assert outcome["status"] is LlamaStatus.READY
    assert outcome["after"] is LlamaStatus.DISPOSED


def test_iteration_ends_when_the_parent_is_disposed(model_path: Path) -> None:
    parent = SyncLlamaParent(greedy_load(model_path, n_ctx=512))
    parent.init()
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.extend(parent.stream))
    reader.start()
    parent.wait_for_completion(parent.send_prompt("Hello", max_tokens=4))
    parent.dispose()
    reader.join(10)
    assert not reader.is_alive()
    assert got


def test_errors_and_timeouts_reach_the_calling_thread(model_path: Path) -> None:
    with SyncLlamaParent(greedy_load(model_path, n_ctx=512)) as parent:
        with pytest.raises(KeyError):
            parent.wait_for_completion("unknown")
        pid = parent.send_prompt("Write a long story.", max_tokens=400)
        with pytest.raises(TimeoutError):
            parent.wait_for_completion(pid, timeout=0.05)
        parent.stop()
        assert parent.wait_for_completion(pid).finish_reason == "stopped"
        refused: list[BaseException] = []

        def blocking_call_from_a_callback(_: str) -> None:
            try:
                parent.stop()
            except RuntimeError as exc:
                refused.append(exc)

        sub = parent.stream.listen(blocking_call_from_a_callback)
        parent.wait_for_completion(parent.send_prompt("Hi", max_tokens=2))
        sub.cancel()
        assert refused
        assert "deadlock" in str(refused[0])


def test_a_sync_scope_may_refuse_to_lose_turns(model_path: Path) -> None:
    with SyncLlamaParent(greedy_load(model_path, n_ctx=256)) as parent:
        scope = parent.get_scope()
        assert scope.trim_history is True
        scope.trim_history = False
        for i in range(12):
            scope.messages.append({"role": "user", "content": f"Fact {i}: box {i} holds {i * 7} blue marbles."})
            scope.messages.append({"role": "assistant", "content": "Noted."})
        refused = scope.wait_for_completion(scope.send_prompt("How many in box 3?", max_tokens=4))
        assert refused.error_code == "context_length_exceeded"
        scope.trim_history = True
        answered = scope.wait_for_completion(scope.send_prompt("How many in box 3?", max_tokens=4))
        assert answered.success and answered.dropped_turns > 0
