"""Property-based tests of the parameter classes and the protocol's round trip."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llama_isolate import ContextParams, LlamaLoad, ModelParams, SamplerParams
from llama_isolate import _protocol as protocol
from llama_isolate._client.scope_state import ScopeSnapshot, pack, unpack
from llama_isolate._params import CACHE_TYPES, POOLING_TYPES

text = st.text(max_size=200)
# What parameters may hold: text with a UTF-8 form, and no NUL where llama.cpp takes a C string.
valid_text = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=200)
c_text = st.text(alphabet=st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=200)
finite = st.floats(allow_nan=False, allow_infinity=False, width=32)

samplers = st.builds(
    SamplerParams,
    temperature=st.floats(0.0, 100.0),
    top_k=st.integers(0, 10_000),
    top_p=st.floats(0.001, 1.0),
    min_p=st.floats(0.0, 1.0),
    typical_p=st.floats(0.001, 1.0),
    repeat_penalty=st.floats(0.001, 100.0),
    repeat_last_n=st.integers(-1, 100_000),
    mirostat=st.sampled_from([0, 1, 2]),
    seed=st.none() | st.integers(0, 2**32 - 2),
    greedy=st.booleans(),
    stop=st.lists(valid_text.filter(bool).map(lambda t: t[:10]), max_size=4).map(tuple),
    grammar=st.none() | c_text.filter(str.strip),
)
contexts = st.builds(
    ContextParams,
    n_ctx=st.integers(64, 1 << 20),
    n_batch=st.integers(64, 4096),
    n_ubatch=st.just(64),
    n_parallel=st.integers(1, 64),
    n_threads=st.integers(1, 64),
    n_predict=st.just(-1) | st.integers(1, 100_000),
    pooling_type=st.sampled_from([p for p in POOLING_TYPES if p != "none"]),
    type_k=st.sampled_from(CACHE_TYPES),
    embeddings=st.booleans(),
    cache_ram_mib=st.integers(0, 1 << 16),
)
loads = st.builds(
    LlamaLoad,
    path=c_text.filter(bool).map(lambda p: p[:50]),
    model_params=st.builds(ModelParams, n_gpu_layers=st.integers(-1, 200), use_mmap=st.booleans()),
    context_params=contexts,
    sampler_params=samplers,
    chat_template=st.none() | valid_text.filter(str.strip),
    verbose=st.booleans(),
)
messages = st.lists(st.tuples(st.sampled_from(["system", "user", "assistant"]), text), min_size=1, max_size=6).map(
    tuple
)
replies = st.one_of(
    st.builds(protocol.Tokens, st.text(min_size=1, max_size=32), text),
    st.builds(
        protocol.Finished,
        prompt_id=st.text(min_size=1, max_size=32),
        finish_reason=st.sampled_from(["stop", "length", "stopped", "cancelled", "error"]),
        error=st.none() | text,
        prompt_tokens=st.integers(0, 1 << 20),
        cached_tokens=st.integers(0, 1 << 20),
        dropped_turns=st.integers(0, 1 << 20),
        completion_tokens=st.integers(0, 1 << 20),
        prompt_eval_s=st.floats(0, 1e6),
        generation_s=st.floats(0, 1e6),
    ),
    st.builds(protocol.Embedding, st.integers(0, 1 << 40), st.lists(finite, max_size=64).map(tuple)),
    st.builds(protocol.RequestFailed, st.integers(0, 1 << 40), st.sampled_from(["request", "feature"]), text),
    st.builds(
        protocol.ScopeState, st.integers(0, 1 << 40), st.lists(st.integers(0, 2**31 - 1)).map(tuple), st.binary()
    ),
)
commands = st.one_of(
    st.builds(protocol.Load, loads),
    st.builds(protocol.Submit, st.text(max_size=32), st.text(max_size=32), messages, samplers, st.integers(-1, 4096)),
    st.builds(protocol.Cancel, st.lists(st.text(max_size=32)).map(tuple), st.sampled_from(["stopped", "cancelled"])),
    st.builds(protocol.Embed, st.integers(0, 1 << 40), text, st.booleans()),
)


def round_trip(message: protocol.Message) -> protocol.Message:
    frame = protocol.encode(message)
    assert protocol.frame_length(frame[:4]) == len(frame) - 4
    return protocol.decode(frame[4:])


@given(commands | replies)
@settings(max_examples=300, deadline=None)
def test_every_message_survives_the_wire(message: protocol.Message) -> None:
    assert round_trip(message) == message


@given(loads)
@settings(max_examples=100, deadline=None)
def test_valid_parameters_are_kept_exactly(load: LlamaLoad) -> None:
    assert dataclasses.replace(load) == load
    assert isinstance(load.path, str)
    assert load.context_params.n_ubatch <= load.context_params.n_batch


@given(
    st.sampled_from(["temperature", "top_p", "min_p", "typical_p", "repeat_penalty", "mirostat_tau"]),
    st.floats(-1e6, -1e-6) | st.just(float("nan")),
)
def test_negative_or_nan_sampler_values_are_refused(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        SamplerParams(**{field: value})


@given(st.sampled_from(["n_ctx", "n_batch", "n_parallel", "n_threads", "cache_ram_mib"]), st.integers(-1000, -1))
def test_negative_counts_are_refused(field: str, value: int) -> None:
    with pytest.raises(ValueError, match=field):
        ContextParams(**{field: value})


@given(
    st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant"]), "content": text}), max_size=5),
    st.lists(st.integers(0, 2**31 - 1), max_size=100).map(tuple),
    st.binary(max_size=500),
)
def test_scope_states_round_trip(history: list[dict[str, str]], tokens: tuple[int, ...], data: bytes) -> None:
    snapshot = ScopeSnapshot("model", "k=f16,v=f16", history, tokens, data)
    assert unpack(pack(snapshot)) == snapshot
