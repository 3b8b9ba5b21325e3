"""Loading a model and context through llama-cpp-python's low-level API.

Everything here runs in the worker process. Failures are raised as
`LoadFailure(kind, message)`, which the worker sends up as data.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import llama_cpp as C

from .._params import UNQUANTIZED_CACHE, ContextParams, LlamaLoad, ModelParams
from .._protocol import ErrorKind
from . import flash
from .prompt import PRIVATE_MARKER

GGUF_MAGIC = b"GGUF"

_SPLIT_MODE = {"none": 0, "layer": 1, "row": 2}
_LOAD_MODE = {(False, False): 0, (True, False): 1, (False, True): 2, (True, True): 3}
_POOLING = {"unspecified": -1, "none": 0, "mean": 1, "cls": 2, "last": 3, "rank": 4}
_FLASH = {"auto": -1, "off": 0, "on": 1}
_ROPE = {"unspecified": -1, "none": 0, "linear": 1, "yarn": 2, "longrope": 3}
_GGML_TYPE = {
    "f32": 0,
    "f16": 1,
    "q4_0": 2,
    "q4_1": 3,
    "q5_0": 6,
    "q5_1": 7,
    "q8_0": 8,
    "iq4_nl": 20,
    "bf16": 30,
}


class LoadFailure(Exception):
    """Loading failed for a reason the parent maps to a public exception."""

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


_INSTALLED: list[object] = []  # every log callback handed to llama.cpp, kept alive (see `LlamaLog`)


class LlamaLog:
    """Receives llama.cpp's (and ggml's) log; keeps the last lines for error messages.

    Silent unless `verbose`, in which case lines go to stderr as llama.cpp
    would write them.
    """

    def __init__(self, verbose: bool) -> None:
        self.verbose = verbose
        self.recent: collections.deque[str] = collections.deque(maxlen=30)
        self._partial = ""
        self._callback = C.llama_log_callback(self._on_log)
        # llama.cpp keeps calling the last callback set for as long as the process lives, this object or not:
        # freed, it would crash the next load (an engine made and closed inside a test process, say).
        _INSTALLED.append(self._callback)
        C.llama_log_set(self._callback, ctypes.c_void_p(0))

    def cover_mtmd(self) -> None:
        """Route mtmd's (and its CLIP encoder's) log here too."""
        import llama_cpp.mtmd_cpp as M

        M.mtmd_helper_log_set(self._callback, ctypes.c_void_p(0))

    def _on_log(self, level: int, text: bytes | None, _user: object) -> None:
        chunk = (text or b"").decode("utf-8", "replace")
        if self.verbose:
            sys.stderr.write(chunk)
        self._partial += chunk
        *lines, self._partial = self._partial.split("\n")
        self.recent.extend(line for line in lines if line.strip())

    def mentions(self, *words: str) -> bool:
        return any(word in line.lower() for line in self.recent for word in words)

    def last(self, n: int = 2) -> str:
        return " | ".join(line.strip() for line in list(self.recent)[-n:])


def check_model_file(path: str, what: str) -> None:
    """Raise `LoadFailure` unless `path` is a readable GGUF file."""
    if not os.path.exists(path):
        raise LoadFailure("not_found", f"{what} not found: {path}")
    if os.path.isdir(path):
        raise LoadFailure("invalid_model", f"{what} is a directory, not a GGUF file: {path}")
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise LoadFailure("not_found", f"{what} cannot be read: {path} ({exc.strerror})") from exc
    if magic != GGUF_MAGIC:
        raise LoadFailure(
            "invalid_model",
            f"{what} is not a GGUF file (it starts with {magic!r}, not b'GGUF'): {path}",
        )


@dataclass(frozen=True)
class Flash:
    """The context's flash attention: on (True), off (False) or llama.cpp's choice (None), and why."""

    on: bool | None
    note: str


@dataclass
class LoadedModel:
    """The llama.cpp handles the engine works with; `close()` frees them."""

    model: int
    ctx: int  # 0 for a vocab_only load
    pooling: bool  # embeddings enabled with a pooling llama.cpp can do
    mtmd: int = 0  # the multimodal projector's context, when mmproj_path was given
    flash: Flash = Flash(None, "")  # what the context uses for attention, and why

    def close(self) -> None:
        if self.mtmd:
            import llama_cpp.mtmd_cpp as M

            M.mtmd_free(self.mtmd)
            self.mtmd = 0
        if self.ctx:
            C.llama_free(self.ctx)
            self.ctx = 0
        if self.model:
            C.llama_model_free(self.model)
            self.model = 0


def load_model(load: LlamaLoad, log: LlamaLog, on_progress: Callable[[float], None] | None = None) -> LoadedModel:
    """Load the weights and create the context; raises `LoadFailure`.

    `on_progress(fraction)` is called from llama.cpp's load-progress callback.
    """
    path = os.fspath(load.path)
    check_model_file(path, "model file")
    C.llama_backend_init()
    with _model_params(load.model_params, on_progress) as params:
        model = C.llama_model_load_from_file(path.encode(), params)
    if not model:
        raise _classify(log, f"llama.cpp could not load the model {path}")
    try:
        if load.model_params.vocab_only:
            return LoadedModel(model, 0, False)
        offloaded = load.model_params.n_gpu_layers != 0 and bool(C.llama_supports_gpu_offload())
        attention = _flash(model, path, load.context_params, offloaded=offloaded)
        loaded = _new_context(model, load.context_params, log, attention)
    except BaseException:
        C.llama_model_free(model)
        raise
    if load.mmproj_path is not None:
        try:
            loaded.mtmd = _load_projector(load, model, log)
        except BaseException:
            loaded.close()
            raise
    return loaded


def _load_projector(load: LlamaLoad, model: int, log: LlamaLog) -> int:
    """The mtmd context for `load.mmproj_path`; raises `LoadFailure("invalid_mmproj")`."""
    import llama_cpp.mtmd_cpp as M

    path = os.fspath(load.mmproj_path or "")
    try:
        check_model_file(path, "mmproj file")
    except LoadFailure as exc:
        raise LoadFailure("not_found" if exc.kind == "not_found" else "invalid_mmproj", exc.message) from exc
    log.cover_mtmd()
    params = M.mtmd_context_params_default()
    params.use_gpu = load.model_params.n_gpu_layers != 0
    params.n_threads = load.context_params.n_threads
    params.print_timings = False
    params.warmup = False
    marker = PRIVATE_MARKER.encode()  # must outlive the call
    params.media_marker = marker
    handle = M.mtmd_init_from_file(path.encode(), model, params)
    if not handle:
        detail = log.last()
        raise LoadFailure(
            "invalid_mmproj",
            f"mmproj file is not a multimodal projector for this model: {path}"
            + (f" (llama.cpp said: {detail})" if detail else ""),
        )
    return int(handle)


@contextlib.contextmanager
def _model_params(p: ModelParams, on_progress: Callable[[float], None] | None) -> Iterator[C.llama_model_params]:
    params = C.llama_model_default_params()
    callback = None
    if on_progress is not None:

        def report(fraction: float, _data: object) -> bool:
            on_progress(fraction)
            return True  # keep loading

        callback = C.llama_progress_callback(report)
        params.progress_callback = callback
    params.n_gpu_layers = p.n_gpu_layers
    params.split_mode = _SPLIT_MODE[p.split_mode]
    params.main_gpu = p.main_gpu
    params.vocab_only = p.vocab_only
    params.check_tensors = p.check_tensors
    params.load_mode = _LOAD_MODE[(p.use_mmap, p.use_mlock)]
    split = None
    if p.tensor_split:
        split = (ctypes.c_float * max(C.llama_max_devices(), len(p.tensor_split)))(*p.tensor_split)
        params.tensor_split = split
    yield params  # `split` and `callback` must outlive the load call


def _flash(model: int, path: str, p: ContextParams, *, offloaded: bool) -> Flash:
    """What `p.flash_attention` means for this model here.

    "auto" on a CPU is measured (`flash.decide`: which is faster differs from
    one CPU to the next, and with the depth of the context), unless a quantized
    V cache needs flash attention. With a GPU, llama.cpp decides.
    """
    if p.flash_attention != "auto":
        return Flash(p.flash_attention == "on", "as asked (ContextParams.flash_attention)")
    if offloaded:
        return Flash(None, "llama.cpp's choice (layers on a GPU)")
    if p.type_v not in UNQUANTIZED_CACHE:
        return Flash(True, f"a {p.type_v} V cache needs it")
    types = (_GGML_TYPE[p.type_k], _GGML_TYPE[p.type_v])
    verdict = flash.decide(model, path, n_threads=p.n_threads, n_threads_batch=p.n_threads_batch, cache_types=types)
    return Flash(verdict.on, verdict.describe())


def _new_context(model: int, p: ContextParams, log: LlamaLog, attention: Flash) -> LoadedModel:
    # One sequence per parallel slot, plus one for embeddings, each with its
    # own KV stream of n_ctx cells. Separate streams (not llama.cpp's unified
    # buffer) keep every sequence's attention independent of the others, so a
    # prompt's greedy output is the same alone and batched.
    n_seq_max = p.n_parallel + (1 if p.embeddings else 0)
    params = C.llama_context_default_params()
    params.n_ctx = p.n_ctx * n_seq_max
    params.n_batch = p.n_batch
    params.n_ubatch = p.n_ubatch
    params.n_seq_max = n_seq_max
    params.n_threads = p.n_threads
    params.n_threads_batch = p.n_threads_batch
    params.kv_unified = False
    params.embeddings = False  # switched on only while an embedding is computed
    params.pooling_type = _pooling(model, p)
    params.flash_attn_type = _FLASH["auto" if attention.on is None else "on" if attention.on else "off"]
    params.type_k = _GGML_TYPE[p.type_k]
    params.type_v = _GGML_TYPE[p.type_v]
    params.rope_scaling_type = _ROPE[p.rope_scaling_type]
    for name in ("rope_freq_base", "rope_freq_scale", "yarn_ext_factor", "yarn_attn_factor"):
        if getattr(p, name) is not None:
            setattr(params, name, getattr(p, name))
    for name in ("yarn_beta_fast", "yarn_beta_slow", "yarn_orig_ctx"):
        if getattr(p, name) is not None:
            setattr(params, name, getattr(p, name))
    params.no_perf = True
    ctx = C.llama_init_from_model(model, params)
    if not ctx:
        raise _classify(log, f"llama.cpp could not create a context of {params.n_ctx} tokens")
    pooling = p.embeddings and C.llama_pooling_type(ctx) != 0
    return LoadedModel(model, ctx, pooling, flash=attention)


def _pooling(model: int, p: ContextParams) -> int:
    """The pooling type: as asked, else the model's, else mean for a model naming none."""
    if p.pooling_type != "unspecified" or not p.embeddings:
        return _POOLING[p.pooling_type]
    arch = meta_value(model, "general.architecture") or ""
    own = meta_value(model, f"{arch}.pooling_type")
    return int(own) if own not in (None, "", "0") else _POOLING["mean"]


def meta_value(model: int, key: str) -> str | None:
    """A GGUF metadata value of the model as text, or None."""
    buf = ctypes.create_string_buffer(512)
    n = C.llama_model_meta_val_str(model, key.encode(), buf, len(buf))
    if n < 0:
        return None
    if n >= len(buf):
        buf = ctypes.create_string_buffer(n + 1)
        C.llama_model_meta_val_str(model, key.encode(), buf, len(buf))
    return buf.value.decode("utf-8", "replace")


def model_description(model: int) -> str:
    buf = ctypes.create_string_buffer(256)
    C.llama_model_desc(model, buf, len(buf))
    return buf.value.decode("utf-8", "replace")


def _classify(log: LlamaLog, message: str) -> LoadFailure:
    detail = log.last()
    text = message + (f" (llama.cpp said: {detail})" if detail else "")
    if log.mentions("alloc", "out of memory", "cannot allocate"):
        return LoadFailure("out_of_memory", text + "; not enough memory")
    return LoadFailure("invalid_model", text)
