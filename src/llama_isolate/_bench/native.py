"""Native llama.cpp, the reference every speed figure is set beside when its binaries are given.

The binaries come from `LLAMA_NATIVE_DIR` (a directory holding llama-server,
llama-bench and llama-batched-bench, as `make native` builds them into
.native/bin), or one by one from `LLAMA_SERVER_BIN`, `LLAMA_BENCH_BIN` and
`LLAMA_BATCHED_BENCH_BIN`. Each runs with its own defaults but the thread
count, as a user would run it: flash attention is then llama.cpp's choice
("auto", which is on for a CPU).
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass

from .common import N_THREADS, model_path

TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Native:
    """Paths of the native binaries found (None: not given)."""

    server: str | None
    bench: str | None
    batched_bench: str | None

    @classmethod
    def find(cls) -> Native:
        directory = os.environ.get("LLAMA_NATIVE_DIR") or ""

        def one(env: str, name: str) -> str | None:
            given = os.environ.get(env) or (os.path.join(directory, name) if directory else "")
            return given if given and os.access(given, os.X_OK) else None

        return cls(
            one("LLAMA_SERVER_BIN", "llama-server"),
            one("LLAMA_BENCH_BIN", "llama-bench"),
            one("LLAMA_BATCHED_BENCH_BIN", "llama-batched-bench"),
        )


def _run(argv: list[str]) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{os.path.basename(argv[0])} failed ({done.returncode}): {done.stderr[-500:]}")
    return done.stdout


def generation(binary: str, n_gen: int) -> float:
    """`llama-bench`'s generation speed, tokens per second: `n_gen` tokens from an empty cache, no sampling."""
    out = _run([binary, "-m", model_path(), "-t", str(N_THREADS), "-p", "0", "-n", str(n_gen), "-r", "1", "-o", "json"])
    (test,) = json.loads(out)
    return float(test["avg_ts"])


@dataclass(frozen=True)
class Batched:
    """One `llama-batched-bench` shape: seconds reading the prompts, seconds generating, generated tokens."""

    prompt_s: float
    generation_s: float
    generated: int

    @property
    def tok_s(self) -> float:
        """Generated tokens over the whole time, the prompts' included (as our throughput figure counts)."""
        return self.generated / (self.prompt_s + self.generation_s)


def batched(binary: str, *, prompt: int, generated: int, sequences: int) -> Batched:
    """`sequences` prompts of `prompt` tokens read in one batch, then `generated` tokens each, decoded together."""
    context = sequences * (prompt + generated) + 64
    argv = [binary, "-m", model_path(), "-t", str(N_THREADS), "-tb", str(N_THREADS), "-c", str(context)]
    argv += ["-npp", str(prompt), "-ntg", str(generated), "-npl", str(sequences), "--output-format", "jsonl"]
    records = [json.loads(line) for line in _run(argv).splitlines() if line.startswith("{")]
    if not records:
        raise RuntimeError("llama-batched-bench printed no result")
    last = records[-1]
    return Batched(float(last["t_pp"]), float(last["t_tg"]), sequences * generated)
