"""The worker starts without re-running the caller's __main__, and llama.cpp stays quiet."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = """\
import asyncio
from llama_isolate import LlamaLoad, LlamaParent, SamplerParams, default_model_path

with open({marker!r}, "a") as f:  # a side effect at import time, with no main guard
    f.write("ran\\n")

async def main():
    load = LlamaLoad(path=default_model_path(), sampler_params=SamplerParams(greedy=True), verbose={verbose})
    async with LlamaParent(load) as parent:
        pid = await parent.send_prompt("Say hi.", max_tokens=4)
        event = await parent.wait_for_completion(pid)
        print("RESULT", event.success, event.completion_tokens)

asyncio.run(main())
"""


def run(args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], input=stdin, capture_output=True, text=True, timeout=120, check=False
    )


def script(tmp_path: Path, *, verbose: bool = False) -> tuple[str, Path]:
    marker = tmp_path / "marker.txt"
    return SCRIPT.format(marker=str(marker), verbose=verbose), marker


def assert_ran_once(result: subprocess.CompletedProcess[str], marker: Path) -> None:
    assert result.returncode == 0, result.stderr
    assert "RESULT True" in result.stdout
    assert marker.read_text() == "ran\n", "the caller's __main__ ran again in the worker"


def test_a_script_without_a_main_guard(tmp_path: Path) -> None:
    code, marker = script(tmp_path)
    path = tmp_path / "no_guard.py"
    path.write_text(code)
    assert_ran_once(run([str(path)]), marker)


def test_code_piped_to_python_stdin(tmp_path: Path) -> None:
    code, marker = script(tmp_path)
    assert_ran_once(run(["-"], stdin=code), marker)


def test_code_run_like_a_notebook_cell_without_a_file(tmp_path: Path) -> None:
    code, marker = script(tmp_path)
    assert_ran_once(run(["-c", code]), marker)


def test_llama_cpp_log_is_silent_by_default_and_shown_when_verbose(tmp_path: Path) -> None:
    code, _ = script(tmp_path)
    quiet = run(["-c", code])
    assert quiet.returncode == 0
    assert quiet.stderr == ""
    assert quiet.stdout.strip().splitlines() == [quiet.stdout.strip()]  # only our RESULT line
    code, _ = script(tmp_path, verbose=True)
    loud = run(["-c", code])
    assert loud.returncode == 0
    assert "llama_model_loader" in loud.stderr
    assert "llama_model_loader" not in loud.stdout
