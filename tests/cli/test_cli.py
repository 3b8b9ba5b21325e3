"""The command line, run as a person would type it."""

from __future__ import annotations

import io
import json
import os
import pty
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llama_isolate._cli.commands import ProgressBar

from ..helpers.cli import CLI, cli
from ..helpers.paths import ROOT
from ..helpers.pictures import RED


def test_run_streams_one_answer_to_stdout() -> None:
    result = cli("run", "Say hello.", "--max-tokens", "8", "--greedy")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    assert result.stderr == ""  # no progress bar when stderr is not a terminal


def test_the_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "llama-isolate"
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True, check=False)
    assert result.returncode == 0
    assert result.stdout.startswith("llama-isolate ")


def test_piped_chat_is_one_turn_per_line_with_history() -> None:
    result = cli("chat", "--max-tokens", "8", "--greedy", stdin="My name is Ada.\nWhat is my name?\n")
    assert result.returncode == 0, result.stderr
    answers = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(answers) == 2


def test_chat_quits_on_slash_quit() -> None:
    result = cli("chat", "--max-tokens", "4", "--greedy", stdin="Hi\n/quit\nnever sent\n")
    assert result.returncode == 0, result.stderr
    assert len([line for line in result.stdout.splitlines() if line.strip()]) == 1


def test_embed_prints_the_vector_as_json() -> None:
    result = cli("embed", "hello world", "--normalize")
    assert result.returncode == 0, result.stderr
    vector = json.loads(result.stdout)
    assert len(vector) == 576
    assert abs(sum(v * v for v in vector) - 1.0) < 1e-3


def test_a_missing_model_is_one_line_on_stderr_and_exit_1(tmp_path: Path) -> None:
    result = cli("run", "hi", "--model", str(tmp_path / "absent.gguf"))
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [f"llama-isolate: error: model file not found: {tmp_path}/absent.gguf"]
    assert "Traceback" not in result.stderr


def test_bad_arguments_are_usage_errors() -> None:
    result = cli("run", "hi", "--max-tokens", "many")
    assert result.returncode == 2
    assert "invalid int value" in result.stderr
    result = cli("run", "hi", "--temperature", "-1")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "llama-isolate: error: SamplerParams.temperature must be >= 0.0 and <= 100.0, got -1.0"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("run", "hi", "--max-tokens", "0"), "--max-tokens must be >= 1, got 0"),
        (("run", "hi", "--threads", "0"), "ContextParams.n_threads must be between 1 and 1024, got 0"),
        (("tui", "--n-parallel", "0"), "ContextParams.n_parallel must be between 1 and 64, got 0"),
        (("chat", "--top-p", "0"), "SamplerParams.top_p must be > 0.0"),
        (("bench", "nonsense"), "unknown benchmark section(s) nonsense"),
    ],
)
def test_bad_option_values_exit_2_before_the_model_loads(args: tuple[str, ...], message: str) -> None:
    started = time.monotonic()
    result = cli(*args, timeout=30)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert time.monotonic() - started < 10  # refused at once, not after loading a model


def streaming(*args: str) -> subprocess.Popen[str]:
    """`llama-isolate run` writing a long answer into a pipe we read."""
    process = subprocess.Popen(
        [*CLI, "run", "Write a very long story about the sea.", "--max-tokens", "400", "--greedy", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    assert process.stdout.read(20)  # the answer is streaming
    return process


def test_a_closed_stdout_ends_the_answer_quietly_and_at_once() -> None:
    process = streaming()
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # what `| head -1` does after its line
    started = time.monotonic()
    process.wait(timeout=30)
    assert time.monotonic() - started < 10
    assert process.returncode == 141
    assert process.stderr.read() == ""


def test_ctrl_c_stops_run_with_exit_130_and_a_newline() -> None:
    process = streaming()
    os.kill(process.pid, signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130
    assert err.endswith("[stopped]\n")


def test_two_quick_ctrl_c_exit_without_noise() -> None:
    process = streaming()
    os.kill(process.pid, signal.SIGINT)
    time.sleep(0.02)  # a person pressing twice; the second lands while the first is handled
    os.kill(process.pid, signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130
    assert "Traceback" not in err
    assert "destroyed" not in err and "never awaited" not in err


def test_run_with_an_image_and_a_projector(tmp_path: Path) -> None:
    from llama_isolate.testing import make_tiny_vlm

    model, mmproj = make_tiny_vlm(tmp_path)
    image = tmp_path / "red.png"
    image.write_bytes(RED.data)
    args = ("run", "What is this?", "--model", str(model), "--mmproj", str(mmproj), "--greedy", "--max-tokens", "6")
    with_image = cli(*args, "--image", str(image))
    assert with_image.returncode == 0, with_image.stderr
    missing = cli(*args, "--image", str(tmp_path / "nope.png"))
    assert missing.returncode == 1
    assert "nope.png" in missing.stderr


def test_ctrl_c_stops_the_answer_and_the_chat_goes_on() -> None:
    chat = subprocess.Popen(
        [*CLI, "chat", "--max-tokens", "300", "--greedy"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert chat.stdin is not None and chat.stdout is not None
    chat.stdin.write("Write a very long story about the sea.\n")
    chat.stdin.flush()
    assert chat.stdout.read(20)  # the answer is streaming
    os.kill(chat.pid, signal.SIGINT)
    chat.stdin.write("Say yes.\n/quit\n")
    chat.stdin.flush()
    _, err = chat.communicate(timeout=120)
    assert chat.returncode == 0, err
    assert "[stopped]" in err
    assert "Traceback" not in err


def test_ctrl_c_at_the_prompt_ends_the_chat() -> None:
    controller, terminal = pty.openpty()  # a terminal on stdin: the interactive chat
    chat = subprocess.Popen([*CLI, "chat"], stdin=terminal, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    os.close(terminal)
    try:
        assert chat.stderr is not None
        assert "Type a message" in chat.stderr.readline()  # loaded, waiting at the prompt
        os.kill(chat.pid, signal.SIGINT)
        _, err = chat.communicate(timeout=60)
    finally:
        os.close(controller)
    # 0 when Ctrl-C lands in input(), 130 if it lands a moment before it.
    assert chat.returncode in (0, 130)
    assert "Traceback" not in err


def test_the_progress_bar_draws_only_on_a_terminal() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    bar = ProgressBar("loading m.gguf", screen)
    for fraction in (0.0, 0.5, 0.5, 1.0):
        bar(fraction)
    bar.done()
    drawn = screen.getvalue()
    assert drawn.count("\r") == 4  # 0 %, 50 % once, 100 %, and the clear
    assert " 50%" in drawn and "100%" in drawn
    quiet = io.StringIO()
    ProgressBar("loading", quiet)(0.5)
    assert quiet.getvalue() == ""


@pytest.mark.parametrize("command", ["run", "chat", "embed", "bench", "tui"])
def test_every_command_has_help(command: str) -> None:
    result = cli(command, "--help")
    assert result.returncode == 0
    assert "usage: llama-isolate" in result.stdout


def test_bench_help_names_every_section_and_python_m_bench_is_the_same_command() -> None:
    from llama_isolate._bench.run import SECTIONS

    result = subprocess.run(
        [sys.executable, "-m", "bench", "--help"], capture_output=True, text=True, timeout=60, check=False, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    assert all(name in result.stdout for name in SECTIONS)
    wrong = subprocess.run(
        [sys.executable, "-m", "bench", "nonsense"], capture_output=True, text=True, timeout=60, check=False, cwd=ROOT
    )
    assert wrong.returncode == 2 and "unknown benchmark section(s) nonsense" in wrong.stderr  # no traceback
