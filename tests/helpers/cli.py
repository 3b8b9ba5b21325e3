"""The command line as a subprocess: `python -m llama_isolate`, run with arguments and an optional stdin."""

from __future__ import annotations

import subprocess
import sys

CLI = [sys.executable, "-m", "llama_isolate"]


def cli(*args: str, stdin: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], input=stdin, capture_output=True, text=True, timeout=timeout, check=False)
