"""Several conversations at once: ours beside native `llama-batched-bench` at the same shape, and beside ourselves
one by one.

The shape is llama-batched-bench's: N sequences, each a prompt of `PROMPT_TOKENS`
tokens of its own, then `GENERATED` tokens each (end of text is banned, so
every sequence runs the full count). Native reads all N prompts in one batch,
then decodes the N sequences together, with no sampling; we get the N prompts
as N scopes would send them, and sample every token (greedy). Both figures are
generated tokens over the whole time, the prompts' included. Rounds take turns
(ours, native) and each figure is the median of `ROUNDS`.

The last row is our own batching gain: 8 scopes at once against the same 8
prompts one after another in one slot.
"""

from __future__ import annotations

import statistics
import time

from .. import LlamaParent, SamplerParams
from . import native
from .common import Report, load, model_path, verdict

PROMPT_TOKENS = 64
GENERATED = 96
ROUNDS = 3
WORDS = [
    "the",
    "river",
    "ran",
    "past",
    "old",
    "stone",
    "houses",
    "where",
    "seven",
    "quiet",
    "painters",
    "kept",
    "small",
    "gardens",
    "of",
    "blue",
]


class Prompts:
    """Texts the model reads as an exact number of tokens (counted by llama.cpp's tokenizer, nothing decoded)."""

    def __init__(self) -> None:
        import llama_cpp as C
        from llama_cpp import Llama

        self._vocab = Llama(model_path=model_path(), vocab_only=True, verbose=False)
        vocab = self._vocab._model.vocab
        # Banning every end-of-generation token keeps each sequence going for its full count, as native's does.
        ends = [t for t in range(self._vocab.n_vocab()) if C.llama_vocab_is_eog(vocab, t)]
        self.sampler = SamplerParams(greedy=True, logit_bias=tuple((t, float("-inf")) for t in ends))

    def exact(self, tag: str, tokens: int) -> str:
        """Text starting with `tag` that is exactly `tokens` tokens long."""
        words = tokens
        for _ in range(6):
            text = tag + " " + " ".join(WORDS[i % len(WORDS)] for i in range(words))
            counted = len(self._vocab.tokenize(text.encode(), add_bos=True, special=True))
            if counted == tokens:
                return text
            words += tokens - counted
        raise RuntimeError(f"no text of exactly {tokens} tokens found")


async def our_round(parent: LlamaParent, prompts: list[str], sampler: SamplerParams) -> float:
    scopes = [parent.get_scope() for _ in prompts]
    started = time.perf_counter()
    ids = [
        await s.send_prompt(p, max_tokens=GENERATED, sampler_params=sampler)
        for s, p in zip(scopes, prompts, strict=True)
    ]
    events = [await parent.wait_for_completion(i) for i in ids]
    elapsed = time.perf_counter() - started
    for scope in scopes:
        await scope.dispose()
    assert all(e.completion_tokens == GENERATED and e.cached_tokens == 0 for e in events), events
    return sum(e.completion_tokens for e in events) / elapsed


async def one_by_one(texts: Prompts, prompts: list[str]) -> float:
    async with LlamaParent(load(n_parallel=1, n_ctx=1024, plain=True)) as parent:
        await our_round(parent, [texts.exact("Warm up:", PROMPT_TOKENS)], texts.sampler)
        return await our_round(parent, prompts, texts.sampler)


async def beside_native(report: Report, binary: str | None, sequences: int, texts: Prompts) -> None:
    """Rounds of ours and native taking turns, at N sequences."""
    ours: list[float] = []
    theirs: list[float] = []
    async with LlamaParent(load(n_parallel=sequences, n_ctx=1024, plain=True)) as parent:
        await our_round(parent, [texts.exact("Warm up:", PROMPT_TOKENS)], texts.sampler)
        for r in range(ROUNDS):
            # Every prompt differs from its second token on, round after round too: no cache is reused.
            prompts = [texts.exact(f"{(r + 1) * 100 + i}:", PROMPT_TOKENS) for i in range(sequences)]
            ours.append(await our_round(parent, prompts, texts.sampler))
            if binary is not None:
                shape = native.batched(binary, prompt=PROMPT_TOKENS, generated=GENERATED, sequences=sequences)
                theirs.append(shape.tok_s)
        flash = parent.model_info.flash_attention if parent.model_info else None
    mine = f"{statistics.median(ours):.1f} tok/s (flash attention {'on' if flash else 'off'})"
    figure = f"{sequences} conversations, {PROMPT_TOKENS}-token prompts + {GENERATED} tokens each"
    report.beside_native(figure, ours, theirs, shown=mine, tool=f"llama-batched-bench npl {sequences}")


async def run(report: Report) -> None:
    binary = native.Native.find().batched_bench
    texts = Prompts()
    for sequences in (1, 8):
        await beside_native(report, binary, sequences, texts)
    async with LlamaParent(load(n_parallel=8, n_ctx=1024, plain=True)) as parent:
        together = await our_round(parent, [texts.exact(f"{900 + i}:", PROMPT_TOKENS) for i in range(8)], texts.sampler)
    alone = await one_by_one(texts, [texts.exact(f"{950 + i}:", PROMPT_TOKENS) for i in range(8)])
    report.add(
        "8 conversations at once (n_parallel=8)",
        f"{together:.1f} tok/s",
        f"the same one by one (n_parallel=1) {alone:.1f} tok/s",
        verdict(together >= 1.5 * alone, f"{together / alone:.2f}x (target >= 1.5x)"),
    )
