"""The main job on the embedded default model: the seed's full lifecycle,
two conversations (scopes) and an embedding, while a 1 ms timer shows that the
event loop never stalls.

Run it with `make demo` (which sets up .venv first) or `python examples/demo.py`.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable

from llama_isolate import (
    ContextParams,
    LlamaLoad,
    LlamaParent,
    SamplerParams,
    default_model_path,
)


async def heartbeat(worst: list[float]) -> None:
    last = time.perf_counter()
    while True:
        await asyncio.sleep(0.001)
        now = time.perf_counter()
        worst[0] = max(worst[0], now - last - 0.001)
        last = now


def painter(color: str) -> Callable[[str], None]:
    """A stream listener that prints tokens, in color on a terminal."""
    start, end = (f"\033[{color}m", "\033[0m") if sys.stdout.isatty() else ("", "")
    return lambda token: print(f"{start}{token}{end}", end="", flush=True)


async def main() -> None:
    worst = [0.0]
    beat = asyncio.create_task(heartbeat(worst))

    # 1. Setup
    parent = LlamaParent(
        LlamaLoad(
            path=default_model_path(),
            context_params=ContextParams(n_ctx=4096, embeddings=True),
            sampler_params=SamplerParams(temperature=0.2, seed=42),
        )
    )
    # 2. Initialize: spawns the worker process and loads the model.
    started = time.perf_counter()
    await parent.init()
    assert parent.model_info is not None
    print(
        f"[loaded {parent.model_info.description} in {time.perf_counter() - started:.2f} s, "
        f"worker pid {parent.worker_pid}]"
    )

    # 3. Send a prompt, 4. listen, 5. wait for it to finish.
    prompt_id = await parent.send_prompt("Why is the sky blue?", max_tokens=96)
    sub = parent.stream.listen(lambda token: print(token, end="", flush=True))
    event = await parent.wait_for_completion(prompt_id)
    sub.cancel()
    print(
        f"\n[done: {event.finish_reason}, {event.completion_tokens} tokens, "
        f"{event.timings.tokens_per_second:.0f} tok/s]\n"
    )

    # Two conversations on one worker, each with its own stream and history.
    poet, chef = parent.get_scope(), parent.get_scope()
    poet.stream.listen(painter("35"))
    chef.stream.listen(painter("33"))
    ids = [
        await poet.send_prompt("Write a two-line poem about rain.", max_tokens=48),
        await chef.send_prompt("Name three ingredients of a pancake.", max_tokens=48),
        await poet.send_prompt("Now make it about snow.", max_tokens=48),
    ]
    for pid in ids:
        await parent.wait_for_completion(pid)
        print()
    print(f"[poet's conversation has {len(poet.messages)} turns, the chef's {len(chef.messages)}]\n")

    # An embedding, computed between decode steps.
    vector = await parent.get_embeddings("The sky is blue because of Rayleigh scattering.", normalize=True)
    print(f"[embedding: {len(vector)} floats, first three {[round(v, 4) for v in vector[:3]]}]")

    # 6. Cleanup
    await parent.dispose()
    beat.cancel()
    print(f"[disposed; worst event-loop stall during all of this: {worst[0] * 1000:.1f} ms]")


if __name__ == "__main__":
    asyncio.run(main())
