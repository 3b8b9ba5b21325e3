"""Tiny random-weight GGUF models, for fast tests of code built on llama_isolate.

Their answers are noise, but the whole path runs through llama.cpp for real:
loading, chat, streaming, stop, KV cache, and (with `make_tiny_vlm`) images
through mtmd. The same seed writes the same bytes, and with greedy sampling
the same input gives the same output.

Needs the ``gguf`` and ``numpy`` packages (``pip install 'llama-isolate[testing]'``).

Example::

    from llama_isolate import LlamaLoad, LlamaParent, SamplerParams
    from llama_isolate.testing import make_tiny_model

    async def test_my_chat_feature(tmp_path):
        load = LlamaLoad(path=make_tiny_model(tmp_path), sampler_params=SamplerParams(greedy=True))
        async with LlamaParent(load) as parent:
            event = await parent.wait_for_completion(await parent.send_prompt("hi", max_tokens=4))
            assert event.success
"""

from __future__ import annotations

import os
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["TinyTextShape", "TinyVisionShape", "make_tiny_model", "make_tiny_vlm"]


@dataclass(frozen=True)
class TinyTextShape:
    """The size of the tiny text model (a llama-architecture transformer).

    Example::

        make_tiny_model(tmp_path, shape=TinyTextShape(n_embd=128, n_layer=4))
    """

    n_embd: int = 64
    n_layer: int = 2
    n_head: int = 4
    n_head_kv: int = 2
    n_ff: int = 128
    n_ctx_train: int = 2048


@dataclass(frozen=True)
class TinyVisionShape:
    """The size of the tiny vision tower and its LLaVA-style MLP projector.

    Example::

        make_tiny_vlm(tmp_path, vision=TinyVisionShape(image_size=64))  # 64 image tokens
    """

    image_size: int = 32
    patch_size: int = 8
    n_embd: int = 32
    n_layer: int = 2
    n_head: int = 2
    n_ff: int = 64
    n_proj_hidden: int = 64

    @property
    def n_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


def _require() -> tuple[Any, Any]:
    try:
        import gguf
        import numpy
    except ImportError as exc:  # pragma: no cover - exercised without the extra
        raise ImportError(
            "llama_isolate.testing needs the gguf and numpy packages: pip install 'llama-isolate[testing]'"
        ) from exc
    return gguf, numpy


# The vocabulary: control tokens, every byte (so any text can be tokenized),
# and printable ASCII with and without SentencePiece's word-start mark.
_CONTROL = ["<unk>", "<s>", "</s>"]
_BYTES = [f"<0x{b:02X}>" for b in range(256)]
_PRINTABLE = [c for c in string.ascii_letters + string.digits + string.punctuation]
_WORDS = ["\u2581" + c for c in string.ascii_letters + string.digits] + ["\u2581"]


def _vocab() -> tuple[list[str], list[float], list[int]]:
    gguf, _ = _require()
    kinds = gguf.TokenType
    tokens = _CONTROL + _BYTES + _PRINTABLE + _WORDS
    types = (
        [kinds.UNKNOWN, kinds.CONTROL, kinds.CONTROL]
        + [kinds.BYTE] * len(_BYTES)
        + [kinds.NORMAL] * (len(_PRINTABLE) + len(_WORDS))
    )
    # SentencePiece prefers higher scores: longer pieces first, bytes last.
    scores = [0.0, 0.0, 0.0] + [-1000.0] * len(_BYTES) + [-1.0] * len(_PRINTABLE) + [-0.5] * len(_WORDS)
    return tokens, scores, [int(t) for t in types]


def _weights(rng: Any, *shape: int, scale: float = 1.0) -> Any:
    """Random f32 weights with unit-ish activations (fan-in scaled), so outputs depend on inputs."""
    _, np = _require()
    fan_in = shape[-1] if len(shape) > 1 else 1
    return (rng.standard_normal(shape) * scale / np.sqrt(fan_in)).astype(np.float32)


def _text_tensors(rng: Any, shape: TinyTextShape, n_vocab: int) -> dict[str, Any]:
    _, np = _require()
    head_dim = shape.n_embd // shape.n_head
    kv = head_dim * shape.n_head_kv
    tensors = {
        "token_embd.weight": _weights(rng, n_vocab, shape.n_embd, scale=float(np.sqrt(shape.n_embd))),
        "output_norm.weight": np.ones(shape.n_embd, dtype=np.float32),
        "output.weight": _weights(rng, n_vocab, shape.n_embd, scale=4.0),
    }
    for i in range(shape.n_layer):
        tensors |= {
            f"blk.{i}.attn_norm.weight": np.ones(shape.n_embd, dtype=np.float32),
            f"blk.{i}.attn_q.weight": _weights(rng, shape.n_embd, shape.n_embd),
            f"blk.{i}.attn_k.weight": _weights(rng, kv, shape.n_embd),
            f"blk.{i}.attn_v.weight": _weights(rng, kv, shape.n_embd),
            f"blk.{i}.attn_output.weight": _weights(rng, shape.n_embd, shape.n_embd),
            f"blk.{i}.ffn_norm.weight": np.ones(shape.n_embd, dtype=np.float32),
            f"blk.{i}.ffn_gate.weight": _weights(rng, shape.n_ff, shape.n_embd),
            f"blk.{i}.ffn_up.weight": _weights(rng, shape.n_ff, shape.n_embd),
            f"blk.{i}.ffn_down.weight": _weights(rng, shape.n_embd, shape.n_ff),
        }
    return tensors


def _write(path: Path, writer: Any, tensors: dict[str, Any]) -> Path:
    for name, value in tensors.items():
        writer.add_tensor(name, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def make_tiny_model(
    directory: str | os.PathLike[str],
    *,
    seed: int = 0,
    shape: TinyTextShape | None = None,
    name: str = "tiny-model.gguf",
) -> Path:
    """Write a tiny random-weight llama-architecture text model; returns its path.

    About 0.3 MB with the default shape; byte-level SentencePiece vocabulary
    (any text tokenizes); no chat template, so prompts are plain text
    completion. The same `seed` writes the same file. `directory` is created
    if it does not exist.

    Example::

        path = make_tiny_model(tmp_path, seed=1)
    """
    gguf, np = _require()
    shape = shape or TinyTextShape()
    Path(directory).mkdir(parents=True, exist_ok=True)
    path = Path(directory) / name
    tokens, scores, types = _vocab()
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("llama-isolate tiny test model")
    writer.add_context_length(shape.n_ctx_train)
    writer.add_embedding_length(shape.n_embd)
    writer.add_block_count(shape.n_layer)
    writer.add_feed_forward_length(shape.n_ff)
    writer.add_head_count(shape.n_head)
    writer.add_head_count_kv(shape.n_head_kv)
    writer.add_rope_dimension_count(shape.n_embd // shape.n_head)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    rng = np.random.default_rng(seed)
    return _write(path, writer, _text_tensors(rng, shape, len(tokens)))


def _vision_tensors(rng: Any, shape: TinyVisionShape, n_text_embd: int) -> dict[str, Any]:
    _, np = _require()
    e, ff = shape.n_embd, shape.n_ff
    ones, zeros = np.ones(e, dtype=np.float32), np.zeros(e, dtype=np.float32)
    tensors = {
        # conv2d kernel, ne = {patch, patch, 3, n_embd}
        "v.patch_embd.weight": _weights(rng, e, 3, shape.patch_size, shape.patch_size, scale=4.0).reshape(
            e, 3, shape.patch_size, shape.patch_size
        ),
        "v.patch_embd.bias": zeros.copy(),
        "v.position_embd.weight": _weights(rng, shape.n_patches, e),
        "v.pre_ln.weight": ones.copy(),
        "v.pre_ln.bias": zeros.copy(),
        "mm.0.weight": _weights(rng, shape.n_proj_hidden, e),
        "mm.0.bias": np.zeros(shape.n_proj_hidden, dtype=np.float32),
        "mm.2.weight": _weights(rng, n_text_embd, shape.n_proj_hidden, scale=float(np.sqrt(n_text_embd))),
        "mm.2.bias": np.zeros(n_text_embd, dtype=np.float32),
    }
    for i in range(shape.n_layer):
        tensors |= {
            f"v.blk.{i}.ln1.weight": ones.copy(),
            f"v.blk.{i}.ln1.bias": zeros.copy(),
            f"v.blk.{i}.attn_q.weight": _weights(rng, e, e),
            f"v.blk.{i}.attn_q.bias": zeros.copy(),
            f"v.blk.{i}.attn_k.weight": _weights(rng, e, e),
            f"v.blk.{i}.attn_k.bias": zeros.copy(),
            f"v.blk.{i}.attn_v.weight": _weights(rng, e, e),
            f"v.blk.{i}.attn_v.bias": zeros.copy(),
            f"v.blk.{i}.attn_out.weight": _weights(rng, e, e),
            f"v.blk.{i}.attn_out.bias": zeros.copy(),
            f"v.blk.{i}.ln2.weight": ones.copy(),
            f"v.blk.{i}.ln2.bias": zeros.copy(),
            f"v.blk.{i}.ffn_up.weight": _weights(rng, ff, e),
            f"v.blk.{i}.ffn_up.bias": np.zeros(ff, dtype=np.float32),
            f"v.blk.{i}.ffn_down.weight": _weights(rng, e, ff),
            f"v.blk.{i}.ffn_down.bias": zeros.copy(),
        }
    return tensors


def make_tiny_vlm(
    directory: str | os.PathLike[str],
    *,
    seed: int = 0,
    text: TinyTextShape | None = None,
    vision: TinyVisionShape | None = None,
) -> tuple[Path, Path]:
    """Write a tiny text model and a matching vision projector; returns ``(model_path, mmproj_path)``.

    The projector is a CLIP-style vision tower with a LLaVA MLP projector
    (mtmd's projector type "mlp"): a 32x32 image becomes 16 image tokens in
    the text model's embedding space. Random weights, deterministic for `seed`.

    Example::

        model, mmproj = make_tiny_vlm(tmp_path)
        load = LlamaLoad(path=model, mmproj_path=mmproj, sampler_params=SamplerParams(greedy=True))
    """
    gguf, np = _require()
    text = text or TinyTextShape()
    vision = vision or TinyVisionShape()
    model_path = make_tiny_model(directory, seed=seed, shape=text, name="tiny-vlm.gguf")
    path = Path(directory) / "tiny-vlm-mmproj.gguf"
    writer = gguf.GGUFWriter(str(path), "clip")
    writer.add_name("llama-isolate tiny test projector")
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_bool("clip.has_vision_encoder", True)
    writer.add_string("clip.projector_type", "mlp")
    writer.add_bool("clip.use_gelu", True)
    writer.add_uint32("clip.vision.image_size", vision.image_size)
    writer.add_uint32("clip.vision.patch_size", vision.patch_size)
    writer.add_uint32("clip.vision.embedding_length", vision.n_embd)
    writer.add_uint32("clip.vision.feed_forward_length", vision.n_ff)
    writer.add_uint32("clip.vision.projection_dim", text.n_embd)
    writer.add_uint32("clip.vision.block_count", vision.n_layer)
    writer.add_uint32("clip.vision.attention.head_count", vision.n_head)
    writer.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-6)
    writer.add_array("clip.vision.image_mean", [0.5, 0.5, 0.5])
    writer.add_array("clip.vision.image_std", [0.5, 0.5, 0.5])
    rng = np.random.default_rng(seed + 1)
    _write(path, writer, _vision_tensors(rng, vision, text.n_embd))
    return model_path, path
