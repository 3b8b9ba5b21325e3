"""Run every benchmark and print the figures beside their references.

python -m bench            # everything
python -m bench decode     # some sections only
python -m bench serve      # the HTTP servers (not in the default set)
python -m bench replicas   # 2 replicas x 4 slots against 1 x 8 (not in the default set)
python -m bench speculative  # --speculative ngram against off and against native llama-server (not default)
python -m bench ray        # prefix routing across Ray Serve replicas against Ray's default (not default)
"""

from __future__ import annotations

import asyncio
import logging
import sys

from . import (
    choices,
    contention,
    decode,
    parent_cpu,
    prefix,
    ray_routing,
    replicas,
    serve,
    soak,
    speculative,
    stall,
    stop,
    throughput,
    ttft,
)
from .common import Report, machine

SECTIONS = {
    "decode": decode.run,
    "throughput": throughput.run,
    "stall": stall.run,
    "stop": stop.run,
    "ttft": ttft.run,
    "contention": contention.run,
    "parent_cpu": parent_cpu.run,
    "soak": soak.run,
    "serve": serve.run,
    "prefix": prefix.run,
    "choices": choices.run,
    "replicas": replicas.run,
    "speculative": speculative.run,
    "ray": ray_routing.run,
}
DEFAULT = ["decode", "throughput", "stall", "parent_cpu", "contention", "stop", "ttft", "choices"]


async def run(names: list[str]) -> Report:
    """Run the named sections (default: all but the soak), printing as it goes."""
    unknown = [name for name in names if name not in SECTIONS]
    if unknown:
        raise ValueError(f"unknown benchmark section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    report = Report()
    print(f"machine: {machine()}", flush=True)
    for name in names or DEFAULT:
        print(f"[{name}]", flush=True)
        await SECTIONS[name](report)
    print()
    print(report.markdown())
    return report


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(run(sys.argv[1:] if argv is None else argv))
