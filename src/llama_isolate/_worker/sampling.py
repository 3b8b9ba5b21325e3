"""SamplerParams -> a llama.cpp sampler chain; all per-token sampling stays in C."""

from __future__ import annotations

import ctypes

import llama_cpp as C

from .._params import SamplerParams

_RANDOM_SEED = 0xFFFFFFFF  # LLAMA_DEFAULT_SEED: llama.cpp draws a fresh seed
_MIROSTAT_M = 100  # candidates Mirostat 1 estimates s_hat from (llama.cpp's value)


class GrammarError(ValueError):
    """The GBNF grammar did not parse."""


def build_sampler(params: SamplerParams, *, vocab: int, n_vocab: int, n_ctx: int) -> int:
    """A new sampler chain for one prompt; the caller frees it with `llama_sampler_free`."""
    chain = C.llama_sampler_chain_init(C.llama_sampler_chain_default_params())
    try:
        for stage in _stages(params, vocab=vocab, n_vocab=n_vocab, n_ctx=n_ctx):
            C.llama_sampler_chain_add(chain, stage)
    except BaseException:
        C.llama_sampler_free(chain)
        raise
    return chain  # type: ignore[no-any-return]


def _stages(params: SamplerParams, *, vocab: int, n_vocab: int, n_ctx: int) -> list[int]:
    """The chain's stages in llama.cpp's usual order; off stages are left out."""
    seed = _RANDOM_SEED if params.seed is None else params.seed
    stages: list[int] = []
    if params.grammar is not None:
        grammar = C.llama_sampler_init_grammar(vocab, params.grammar.encode(), b"root")
        if not grammar:
            raise GrammarError("SamplerParams.grammar is not valid GBNF with a 'root' rule")
        stages.append(grammar)
    last_n = n_ctx if params.repeat_last_n == -1 else params.repeat_last_n
    if params.repeat_penalty != 1.0 or params.frequency_penalty or params.presence_penalty:
        stages.append(
            C.llama_sampler_init_penalties(
                n_vocab,
                last_n,
                params.repeat_penalty,
                params.frequency_penalty,
                params.presence_penalty,
            )
        )
    if params.dry_multiplier > 0:
        stages.append(_dry(params, vocab=vocab, n_ctx=n_ctx))
    if params.greedy or params.temperature == 0:
        stages.append(C.llama_sampler_init_greedy())
    elif params.mirostat == 1:
        stages.append(C.llama_sampler_init_temp(params.temperature))
        stages.append(
            C.llama_sampler_init_mirostat(n_vocab, seed, params.mirostat_tau, params.mirostat_eta, _MIROSTAT_M)
        )
    elif params.mirostat == 2:
        stages.append(C.llama_sampler_init_temp(params.temperature))
        stages.append(C.llama_sampler_init_mirostat_v2(seed, params.mirostat_tau, params.mirostat_eta))
    else:
        stages.extend(_truncation(params, seed))
        stages.append(C.llama_sampler_init_temp(params.temperature))
        stages.append(C.llama_sampler_init_dist(seed))
    return stages


def _truncation(params: SamplerParams, seed: int) -> list[int]:
    stages = []
    if params.top_k > 0:
        stages.append(C.llama_sampler_init_top_k(params.top_k))
    if params.typical_p < 1.0:
        stages.append(C.llama_sampler_init_typical(params.typical_p, 1))
    if params.top_p < 1.0:
        stages.append(C.llama_sampler_init_top_p(params.top_p, 1))
    if params.min_p > 0.0:
        stages.append(C.llama_sampler_init_min_p(params.min_p, 1))
    if params.xtc_probability > 0.0:
        stages.append(C.llama_sampler_init_xtc(params.xtc_probability, params.xtc_threshold, 1, seed))
    return stages


def _dry(params: SamplerParams, *, vocab: int, n_ctx: int) -> int:
    breakers = [b.encode() for b in params.dry_sequence_breakers]
    array = (ctypes.c_char_p * len(breakers))(*breakers)
    last_n = n_ctx if params.dry_penalty_last_n == -1 else params.dry_penalty_last_n
    return C.llama_sampler_init_dry(  # type: ignore[no-any-return]
        vocab,
        params.dry_multiplier,
        params.dry_base,
        params.dry_allowed_length,
        last_n,
        array,
        len(breakers),
    )
