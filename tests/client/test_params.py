"""The parameter classes refuse bad values at construction, naming the field."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from llama_isolate import ContextParams, LlamaLoad, ModelParams, RestartPolicy, SamplerParams


@pytest.mark.parametrize(
    ("factory", "field"),
    [
        (lambda: ContextParams(n_ctx=0), "n_ctx"),
        (lambda: ContextParams(n_batch=0), "n_batch"),
        (lambda: ContextParams(n_batch=64, n_ubatch=128), "n_ubatch"),
        (lambda: ContextParams(n_parallel=0), "n_parallel"),
        (lambda: ContextParams(n_threads=0), "n_threads"),
        (lambda: ContextParams(n_predict=0), "n_predict"),
        (lambda: ContextParams(pooling_type="max"), "pooling_type"),  # type: ignore[arg-type]
        (lambda: ContextParams(embeddings=True, pooling_type="none"), "pooling_type"),
        (lambda: ContextParams(type_k="q2"), "type_k"),  # type: ignore[arg-type]
        (lambda: ContextParams(type_v="q8_0", flash_attention="off"), "type_v"),
        (lambda: ContextParams(rope_freq_base=-1.0), "rope_freq_base"),
        (lambda: ContextParams(embeddings="yes"), "embeddings"),  # type: ignore[arg-type]
        (lambda: ModelParams(n_gpu_layers=-2), "n_gpu_layers"),
        (lambda: ModelParams(split_mode="columns"), "split_mode"),  # type: ignore[arg-type]
        (lambda: ModelParams(tensor_split=(0.5, -1.0)), "tensor_split"),
        (lambda: SamplerParams(temperature=-0.1), "temperature"),
        (lambda: SamplerParams(top_p=0.0), "top_p"),
        (lambda: SamplerParams(top_p=1.5), "top_p"),
        (lambda: SamplerParams(min_p=2.0), "min_p"),
        (lambda: SamplerParams(top_k=-1), "top_k"),
        (lambda: SamplerParams(repeat_penalty=0.0), "repeat_penalty"),
        (lambda: SamplerParams(mirostat=3), "mirostat"),  # type: ignore[arg-type]
        (lambda: SamplerParams(mirostat_eta=0.0), "mirostat_eta"),
        (lambda: SamplerParams(seed=-5), "seed"),
        (lambda: SamplerParams(seed=2**32), "seed"),
        (lambda: SamplerParams(stop=("",)), "stop"),
        (lambda: SamplerParams(stop="END"), "stop"),  # type: ignore[arg-type]
        (lambda: SamplerParams(grammar="  "), "grammar"),
        (lambda: SamplerParams(dry_base=0.5), "dry_base"),
        (lambda: SamplerParams(temperature=float("nan")), "temperature"),
        (lambda: LlamaLoad(path=""), "path"),
        (lambda: LlamaLoad(path=3), "path"),  # type: ignore[arg-type]
        (lambda: LlamaLoad(path="m.gguf", context_params=SamplerParams()), "context_params"),  # type: ignore[arg-type]
        (lambda: LlamaLoad(path="m.gguf", chat_template=""), "chat_template"),
        (lambda: RestartPolicy(max_attempts=0), "RestartPolicy.max_attempts"),
        (lambda: RestartPolicy(max_attempts=True), "RestartPolicy.max_attempts"),
        (lambda: RestartPolicy(max_attempts=2.0), "RestartPolicy.max_attempts"),  # type: ignore[arg-type]
        (lambda: RestartPolicy(backoff_s=-1.0), "RestartPolicy.backoff_s"),
        (lambda: RestartPolicy(backoff_s=float("nan")), "RestartPolicy.backoff_s"),
        (lambda: RestartPolicy(backoff_s=float("inf")), "RestartPolicy.backoff_s"),
        (lambda: RestartPolicy(backoff_s="1"), "RestartPolicy.backoff_s"),  # type: ignore[arg-type]
        (lambda: RestartPolicy(max_backoff_s=float("inf")), "RestartPolicy.max_backoff_s"),
        (lambda: RestartPolicy(backoff_s=5.0, max_backoff_s=1.0), "RestartPolicy.max_backoff_s"),
        (lambda: RestartPolicy(reset_after_s=-0.5), "RestartPolicy.reset_after_s"),
        (lambda: RestartPolicy(reset_after_s=float("nan")), "RestartPolicy.reset_after_s"),
    ],
)
def test_bad_values_raise_value_error_naming_the_field(factory: object, field: str) -> None:
    with pytest.raises(ValueError, match=field.replace("[", r"\[").replace("]", r"\]")):
        factory()  # type: ignore[operator]


def test_defaults_suit_a_real_chat_on_this_machine() -> None:
    params = ContextParams()
    assert params.n_ctx >= 2048
    assert params.n_parallel == 1
    assert params.n_threads == len(os.sched_getaffinity(0))
    assert params.n_threads_batch == params.n_threads


def test_parameter_classes_are_frozen_and_keyword_only() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        SamplerParams().temperature = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        SamplerParams(0.5)  # type: ignore[misc]


def test_sequences_become_tuples_and_paths_become_str(tmp_path: Path) -> None:
    sampler = SamplerParams(stop=["a", "b"])  # type: ignore[arg-type]
    assert sampler.stop == ("a", "b")
    load = LlamaLoad(path=tmp_path / "m.gguf", mmproj_path=tmp_path / "p.gguf")
    assert load.path == str(tmp_path / "m.gguf")
    assert load.mmproj_path == str(tmp_path / "p.gguf")


def test_a_restart_policy_waits_longer_each_attempt_up_to_its_cap() -> None:
    policy = RestartPolicy(backoff_s=0.5, max_backoff_s=3.0)
    assert [policy.wait_before(n) for n in range(1, 7)] == [0.0, 0.5, 1.0, 2.0, 3.0, 3.0]
    assert policy.wait_before(10_000) == 3.0
    assert RestartPolicy(max_attempts=None, reset_after_s=float("inf")).max_attempts is None


def test_subclassed_values_become_plain_so_the_load_can_be_sent() -> None:
    import enum

    from llama_isolate import Speculative
    from llama_isolate._protocol import sendable

    class Mode(str, enum.Enum):
        NGRAM = "ngram"

    class Tokens(int, enum.Enum):
        EIGHT = 8

    class Word(str):
        pass

    load = LlamaLoad(
        path=Word("model.gguf"),
        context_params=ContextParams(n_ctx=Tokens.EIGHT * 64),
        sampler_params=SamplerParams(stop=[Word("###")], temperature=Temperature(0.5)),
        speculative=Speculative(mode=Mode.NGRAM, max_draft=Tokens.EIGHT),
    )
    assert load.speculative is not None
    assert type(load.speculative.mode) is str and load.speculative.mode == "ngram"
    assert type(load.speculative.max_draft) is int and load.speculative.max_draft == 8
    assert type(load.sampler_params.stop[0]) is str and type(load.sampler_params.temperature) is float
    sendable(load)  # raised TypeError for the enum members and the str subclass before


class Temperature(float):
    pass
