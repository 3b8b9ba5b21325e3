"""n choices for one prompt (`send_prompt(..., n=4)`) beside one.

The same ~300-token prompt and 48 generated tokens (sampled, seed fixed, the
end of generation refused through a logit bias so every choice runs the whole
length), on a parent with 4 slots: the wall time from sending to the event,
best of 3 taken in turn, for n=1 and n=4. Each prompt starts with its own
number, so none reuses another's cache. The prompt is read once either way; the 4 choices
decode together in one batch. Target: n=4 at most 1.6x n=1.
"""

from __future__ import annotations

import time

from .. import LlamaParent, SamplerParams
from .common import Report, load, verdict

ROUNDS = 3
TOKENS = 48
PROMPT = (
    " ".join(
        f"Note {i}: the lighthouse keeper logged {i * 3} ships, {i % 7} storms and one lost gull." for i in range(20)
    )
    + " Write the next entry of the log."
)


async def run(report: Report) -> None:
    async with LlamaParent(load(n_parallel=4)) as parent:
        info = parent.model_info
        assert info is not None
        eog = [0, 2]  # SmolLM2's <|endoftext|> and <|im_end|>
        sampling = SamplerParams(temperature=0.8, seed=11, logit_bias=tuple((t, float("-inf")) for t in eog))
        times: dict[int, float] = {}
        for n in (1, 4) * ROUNDS:  # interleaved, so that a drift of the machine hits both
            scope = parent.get_scope()
            prompt = f"Log book {len(times) * 100 + n}, {time.time_ns()}. {PROMPT}"  # read anew: no cache shares it
            started = time.perf_counter()
            event = await parent.wait_for_completion(
                await scope.send_prompt(prompt, n=n, max_tokens=TOKENS, sampler_params=sampling)
            )
            took = time.perf_counter() - started
            assert event.success, event.error
            assert all(c.completion_tokens == TOKENS for c in event.choices), event.choices
            times[n] = min(times.get(n, took), took)
            await scope.dispose()
        print(f"    n=1 {times[1] * 1000:.0f} ms, n=4 {times[4] * 1000:.0f} ms", flush=True)
    ratio = times[4] / times[1]
    report.add(
        f"choices: n=4 vs n=1, the same prompt and {TOKENS} tokens",
        f"{times[4] * 1000:.0f} ms",
        f"n=1 {times[1] * 1000:.0f} ms",
        verdict(ratio <= 1.6, f"{ratio:.2f}x (target <= 1.6x)"),
    )
