"""The picture of `bench serve`: tok/s and time to first token against the number of clients, per server.

Two rows (idle, and beside one busy process), two panels each (aggregate
tok/s; first token p50 as a solid line, its maximum dashed), one colour per
server. Drawn with matplotlib when it is installed (the dev extra has it).
"""

from __future__ import annotations

import importlib.util
import logging
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .common import machine
from .httpload import Phase

logger = logging.getLogger(__name__)

COLOURS = {"llama_isolate": "#1f77b4", "llama-server": "#d62728", "llama-cpp-python": "#7f7f7f"}


def draw(
    results: Mapping[str, tuple[Mapping[int, Phase], Mapping[int, Phase]]], clients: Sequence[int], path: Path
) -> Path | None:
    """Draw `results` (server label -> (idle phases, busy phases) by client count) into `path`; None without
    matplotlib."""
    if importlib.util.find_spec("matplotlib") is None:
        logger.warning("no picture: matplotlib is not installed (pip install -e '.[dev]')")
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 2, figsize=(11, 7.5), constrained_layout=True)
    for row, condition in enumerate(("idle", "beside one busy process")):
        speed, first = axes[row]
        for label, phases in results.items():
            shown = [n for n in clients if n in phases[row]]
            colour = COLOURS.get(label)
            speed.plot(shown, [phases[row][n].tok_s for n in shown], "o-", color=colour, label=label)
            p50 = [_ms(statistics.median(phases[row][n].ttfts)) if phases[row][n].ttfts else None for n in shown]
            worst = [_ms(max(phases[row][n].ttfts, default=0.0)) or None for n in shown]
            first.plot(shown, p50, "o-", color=colour, label=f"{label} p50")
            first.plot(shown, worst, "x--", color=colour, label=f"{label} max")
        _axes(speed, f"{condition}: tokens per second, all clients together", "tok/s", clients)
        _axes(first, f"{condition}: time to first token", "ms", clients, log=True)
    figure.suptitle(f"llama-isolate serve, llama.cpp's llama-server and llama-cpp-python's server\n{machine()}")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path


def _ms(seconds: float) -> float:
    return seconds * 1000


def _axes(ax: Any, title: str, unit: str, clients: Sequence[int], *, log: bool = False) -> None:
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("clients streaming at once (8 requests of 96 tokens in all)")
    ax.set_ylabel(unit)
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(clients), [str(n) for n in clients])
    if log:
        ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
