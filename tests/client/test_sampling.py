"""SamplerParams reach llama.cpp's sampler chain: each knob changes what it should."""

from __future__ import annotations

from pathlib import Path

import pytest

from llama_isolate import LlamaParent, SamplerParams

PROMPT = "Write one sentence about the sea."


async def reply(
    parent: LlamaParent,
    sampler: SamplerParams | None = None,
    max_tokens: int = 24,
    prompt: str = PROMPT,
    logprobs: int | None = None,
) -> tuple[str, str]:
    scope = parent.get_scope()  # a fresh conversation each time
    event = await parent.wait_for_completion(
        await scope.send_prompt(prompt, sampler_params=sampler, max_tokens=max_tokens, logprobs=logprobs)
    )
    assert event.success, event.error
    return event.text, event.finish_reason


async def test_greedy_temperature_zero_and_top_k_one_agree(parent: LlamaParent) -> None:
    greedy, _ = await reply(parent, SamplerParams(greedy=True))  # the largest logit, read in place
    cold, _ = await reply(parent, SamplerParams(temperature=0.0))
    top1, _ = await reply(parent, SamplerParams(top_k=1, temperature=1.5, seed=7))
    chain, _ = await reply(parent, SamplerParams(greedy=True), logprobs=1)  # through llama.cpp's greedy sampler
    assert greedy == cold == top1 == chain


async def test_greedy_with_a_logit_bias_picks_what_llama_cpps_chain_picks(parent: LlamaParent) -> None:
    plain, _ = await reply(parent, SamplerParams(greedy=True), max_tokens=8)
    event = await parent.wait_for_completion(await parent.get_scope().send_prompt(PROMPT, max_tokens=1, logprobs=1))
    banned = event.logprobs[0].token  # the token greedy decoding starts with
    biased = SamplerParams(greedy=True, logit_bias={banned: float("-inf"), 42: 0.5})
    fast, _ = await reply(parent, biased, max_tokens=8)  # the bias added in place, then the largest logit
    chain, _ = await reply(parent, biased, max_tokens=8, logprobs=1)  # llama.cpp's logit-bias and greedy stages
    assert fast == chain
    assert fast != plain


async def test_a_seed_makes_random_sampling_reproducible(parent: LlamaParent) -> None:
    hot = SamplerParams(temperature=1.5, top_k=0, top_p=1.0, min_p=0.0, seed=1234)
    first, _ = await reply(parent, hot)
    second, _ = await reply(parent, hot)
    others = {
        (await reply(parent, SamplerParams(temperature=1.5, top_k=0, top_p=1.0, min_p=0.0, seed=s)))[0]
        for s in (1, 2, 3)
    }
    assert first == second
    assert len(others | {first}) > 1


async def test_max_tokens_ends_with_length(parent: LlamaParent) -> None:
    event = await parent.wait_for_completion(await parent.send_prompt(PROMPT, max_tokens=5))
    assert event.finish_reason == "length"
    assert event.completion_tokens == 5


async def test_a_stop_string_ends_the_reply_before_it(parent: LlamaParent) -> None:
    full, _ = await reply(parent, SamplerParams(greedy=True), max_tokens=24)
    words = full.split()
    assert len(words) >= 4
    stop = words[3]
    cut, reason = await reply(parent, SamplerParams(greedy=True, stop=(stop,)), max_tokens=24)
    assert reason == "stop"
    assert cut == full[: full.index(stop)]
    assert stop not in cut


async def test_a_grammar_constrains_the_output(parent: LlamaParent) -> None:
    grammar = 'root ::= ("yes" | "no") "."'
    text, reason = await reply(parent, SamplerParams(grammar=grammar, temperature=1.0, seed=3), max_tokens=8)
    assert text in ("yes.", "no.")
    assert reason == "stop"


async def test_an_invalid_grammar_fails_only_that_prompt(parent: LlamaParent) -> None:
    bad = await parent.wait_for_completion(
        await parent.send_prompt(PROMPT, sampler_params=SamplerParams(grammar="root ::= (unclosed"))
    )
    assert not bad.success
    assert bad.finish_reason == "error"
    assert bad.error is not None and "grammar" in bad.error
    assert parent.messages == []  # the failed turn left the history as it was
    good = await parent.wait_for_completion(await parent.send_prompt("Hi", max_tokens=3))
    assert good.success


async def test_penalties_change_greedy_output(parent: LlamaParent) -> None:
    base, _ = await reply(parent, SamplerParams(greedy=True), max_tokens=40)
    penalized, _ = await reply(
        parent, SamplerParams(greedy=True, repeat_penalty=1.8, frequency_penalty=1.0, presence_penalty=1.0), 40
    )
    assert penalized != base


async def test_dry_breaks_a_repetition_that_greedy_decoding_falls_into(parent: LlamaParent) -> None:
    repeat = "Write the word 'hello' fifty times."
    plain, _ = await reply(parent, SamplerParams(greedy=True), max_tokens=40, prompt=repeat)
    dry_params = SamplerParams(greedy=True, dry_multiplier=2.0, dry_base=2.0, dry_allowed_length=1)
    dry, _ = await reply(parent, dry_params, max_tokens=40, prompt=repeat)
    assert plain.lower().count("hello") > 5  # greedy decoding repeats
    assert dry.lower().count("hello") < plain.lower().count("hello")


@pytest.mark.parametrize(
    "stage",
    [
        {"xtc_probability": 1.0, "xtc_threshold": 0.05},
        {"typical_p": 0.2},
        {"mirostat": 1},
        {"mirostat": 2},
    ],
    ids=["xtc", "typical", "mirostat", "mirostat2"],
)
async def test_each_sampling_stage_changes_what_the_same_seed_draws(parent: LlamaParent, stage: dict) -> None:
    async def draw(seed: int, **extra: object) -> str:
        text, _ = await reply(
            parent, SamplerParams(seed=seed, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, **extra), 24
        )
        return text

    changed = [await draw(seed) != await draw(seed, **stage) for seed in (1, 2, 3)]
    assert any(changed), stage


def token_of(model_path: Path, text: str) -> int:
    """The one token `text` is in the default model's vocabulary (read with llama.cpp's tokenizer)."""
    from llama_cpp import Llama

    vocab = Llama(str(model_path), vocab_only=True, verbose=False)
    tokens = vocab.tokenize(text.encode(), add_bos=False)
    assert len(tokens) == 1, tokens
    return tokens[0]


async def test_logit_bias_forces_and_bans_tokens(parent: LlamaParent, model_path: Path) -> None:
    banana = token_of(model_path, " banana")
    forced, _ = await reply(parent, SamplerParams(greedy=True, logit_bias={banana: 100.0}), max_tokens=3)
    assert forced == " banana" * 3
    plain, _ = await reply(parent, SamplerParams(greedy=True), max_tokens=6)
    first = plain.split()[0]
    banned_token = token_of(model_path, first)
    banned, _ = await reply(
        parent, SamplerParams(greedy=True, logit_bias=((banned_token, float("-inf")),)), max_tokens=6
    )
    assert not banned.startswith(first), (plain, banned)


async def test_a_logit_bias_outside_the_vocabulary_is_refused_at_send(parent: LlamaParent) -> None:
    info = parent.model_info
    assert info is not None
    with pytest.raises(ValueError, match="outside the vocabulary"):
        await parent.send_prompt("hi", sampler_params=SamplerParams(logit_bias={info.n_vocab: 1.0}))
    assert parent.queue_length == 0


@pytest.mark.parametrize("bad", [{-1: 1.0}, {1: float("nan")}, {1: float("inf")}, [(1, 2, 3)], "x", {True: 1.0}])
def test_malformed_logit_bias_is_refused_naming_the_field(bad: object) -> None:
    with pytest.raises(ValueError, match="logit_bias"):
        SamplerParams(logit_bias=bad)  # type: ignore[arg-type]


def test_logit_bias_is_kept_as_sorted_pairs() -> None:
    assert SamplerParams(logit_bias={5: -1.0, 2: 3}).logit_bias == ((2, 3.0), (5, -1.0))
