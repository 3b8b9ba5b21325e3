"""The benchmarks' plumbing: finding native llama.cpp, reading its tools' output, pairing rounds, the picture."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from llama_isolate._bench import native, plot
from llama_isolate._bench.httpload import Phase, Stream
from llama_isolate._bench.serve import paired_ratios


def fake_tool(directory: Path, name: str, output: str) -> Path:
    """An executable that prints `output` whatever it is asked, as llama.cpp's tool would."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(f"#!/bin/sh\ncat <<'EOF'\n{output}\nEOF\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture(autouse=True)
def no_native(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LLAMA_NATIVE_DIR", "LLAMA_SERVER_BIN", "LLAMA_BENCH_BIN", "LLAMA_BATCHED_BENCH_BIN"):
        monkeypatch.delenv(name, raising=False)


def test_native_tools_are_found_in_one_directory_or_one_by_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert native.Native.find() == native.Native(None, None, None)
    for name in ("llama-server", "llama-bench", "llama-batched-bench"):
        fake_tool(tmp_path / "bin", name, "")
    monkeypatch.setenv("LLAMA_NATIVE_DIR", str(tmp_path / "bin"))
    found = native.Native.find()
    assert found.server == str(tmp_path / "bin" / "llama-server")
    assert found.batched_bench == str(tmp_path / "bin" / "llama-batched-bench")
    elsewhere = fake_tool(tmp_path / "other", "my-server", "")
    monkeypatch.setenv("LLAMA_SERVER_BIN", str(elsewhere))
    assert native.Native.find().server == str(elsewhere)  # one by one wins over the directory
    monkeypatch.setenv("LLAMA_BENCH_BIN", str(tmp_path / "missing"))
    assert native.Native.find().bench is None  # a path that is not an executable is not a reference


def test_llama_bench_json_gives_the_generation_speed(tmp_path: Path) -> None:
    output = json.dumps([{"n_prompt": 0, "n_gen": 128, "avg_ts": 93.25, "stddev_ts": 1.5}])
    assert native.generation(str(fake_tool(tmp_path, "llama-bench", output)), 128) == 93.25


def test_llama_batched_bench_jsonl_counts_the_prompts_time_in(tmp_path: Path) -> None:
    line = {"pp": 64, "tg": 96, "pl": 8, "t_pp": 1.5, "speed_pp": 341.3, "t_tg": 4.5, "speed_tg": 170.7, "t": 6.0}
    tool = fake_tool(tmp_path, "llama-batched-bench", "main: some log line\n" + json.dumps(line))
    shape = native.batched(str(tool), prompt=64, generated=96, sequences=8)
    assert shape.tok_s == pytest.approx(8 * 96 / 6.0)


def test_a_native_tool_that_fails_says_so(tmp_path: Path) -> None:
    tool = tmp_path / "llama-bench"
    tool.write_text("#!/bin/sh\necho 'model not found' >&2\nexit 3\n")
    tool.chmod(0o755)
    with pytest.raises(RuntimeError, match="failed \\(3\\): model not found"):
        native.generation(str(tool), 128)


def test_each_round_is_set_beside_the_native_rounds_around_it() -> None:
    # Native's speed drifts from 100 to 120 over the run; ours keeps at 0.9x of the native rounds beside it.
    rounds = [(90.0, 100.0), (99.0, 120.0)]
    assert paired_ratios(rounds) == pytest.approx([0.9, 99.0 / 110.0])


def phase(tok_s: float, ttft: float) -> Phase:
    stream = Stream(sent=0.0, first=ttft, end=1.0, chunks=int(tok_s), finished=True, done=True)
    return Phase([stream], 1.0)


def test_the_picture_is_drawn_for_every_server_and_condition(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    clients = (1, 2, 4, 8)
    results = {
        "llama_isolate": (
            {n: phase(80.0 * n**0.5, 0.02 * n) for n in clients},
            {n: phase(50.0, 0.03) for n in clients},
        ),
        "llama-server": ({n: phase(90.0 * n**0.5, 0.02) for n in clients}, {1: phase(1.0, 5.0)}),
    }
    path = plot.draw(results, clients, tmp_path / "serve.png")
    assert path is not None
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 10_000
