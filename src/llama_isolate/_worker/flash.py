"""Flash attention on or off, for `ContextParams.flash_attention="auto"` on a CPU: measured, not assumed.

Which is faster depends on the CPU and on how deep into the context a
sequence is, and no rule carries from one machine to the next. Measured on
two machines of the same kind (2 cores, SmolLM2-135M, llama.cpp's own
benches), generating at depth 96:

- an Intel Xeon with AVX-512: on 93 tok/s, off 90; at depth 288: on 60, off 84;
  at depth 2,080: on 27, off 53;
- an AMD EPYC with AVX2: on 84, off 70.

llama.cpp's CPU kernel attends one query row at a time over the whole cache
(its tiled path needs 64 query rows or more), so its cost grows with the depth
faster than the matrix products of the plain path on some CPUs; and a batch of
2 to 63 new tokens (the next turn of a conversation) takes that row-at-a-time
path too.

So the first load of a model on a machine measures both settings on a chat
turn's shapes (`Probe`): reading a prompt, generating near the start and a few
hundred tokens in, and a short batch deep in the cache. The faster for that
turn wins; the answer is cached on disk per model file, CPU, llama.cpp build
and thread count (`FlashCache`), so later loads only read it. The probe takes
about 3 s for a 135M model and is cut short for large models (`BUDGET_S`):
then flash attention stays off, the safer choice on a CPU, and the log says so.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import llama_cpp as C

from .threads import Reading, others_cpu

logger = logging.getLogger("llama_isolate.worker")

CACHE_ENV = "LLAMA_ISOLATE_CACHE_DIR"
CACHE_FILE = "flash-attention.json"
BUDGET_S = 8.0  # the whole probe; a model too slow for it keeps flash attention off
BUSY_CPUS = 0.25  # other processes using more than this while the probe ran: its figures are not kept
RETRY_S = 600.0  # a provisional verdict is measured again after this long (not at every load of a busy machine)
LOOK_S = 0.2  # how long the machine is watched before measuring: a busy one is not measured at all
SHALLOW = 64  # the prompt read first: generation is timed at this depth...
DEEP = 384  # ...and at this one (a system prompt and a few turns)
GENERATE = 8  # tokens generated (and timed) at each depth
SHORT_BATCH = 16  # a next turn's few new tokens, decoded together deep in the cache
# The chat turn the settings are compared on: reading this many prompt tokens, one short batch, and
# generating this many tokens, half near the start and half deep.
TURN_PROMPT, TURN_GENERATED = 256, 128


class _OutOfTime(Exception):
    """The probe ran past `BUDGET_S`."""


@dataclass(frozen=True)
class Timing:
    """One setting's times, in seconds: per prompt token, per generated token near and deep, one short batch."""

    prompt: float
    shallow: float
    deep: float
    short_batch: float

    def turn(self) -> float:
        """The modelled chat turn's time."""
        generated = TURN_GENERATED / 2 * (self.shallow + self.deep)
        return TURN_PROMPT * self.prompt + self.short_batch + generated


@dataclass(frozen=True)
class Verdict:
    """What a probe found: whether flash attention is on, and the times it was chosen by (None: not measured).

    A provisional verdict (the machine was busy, the probe failed) is tried again after `RETRY_S`.
    """

    on: bool
    with_flash: Timing | None = None
    without: Timing | None = None
    reason: str = ""
    provisional: bool = False

    def describe(self) -> str:
        choice = "on" if self.on else "off"
        if self.with_flash is None or self.without is None:
            return f"flash attention {choice}: {self.reason}"
        on, off = self.with_flash, self.without
        return (
            f"flash attention {choice} (measured: a chat turn {on.turn():.2f} s with it, {off.turn():.2f} s "
            f"without; a generated token at depth {SHALLOW} {on.shallow * 1e3:.1f} vs {off.shallow * 1e3:.1f} ms, "
            f"at depth {DEEP} {on.deep * 1e3:.1f} vs {off.deep * 1e3:.1f} ms)"
        )


class FlashCache:
    """Verdicts on disk, one JSON file of entries keyed by model, CPU, build and threads.

    The directory is `$LLAMA_ISOLATE_CACHE_DIR`, else `$XDG_CACHE_HOME/llama-isolate`, else
    `~/.cache/llama-isolate`. A cache that cannot be read or written is ignored (the probe runs
    again next time); writes replace the file whole, so a reader never sees half of one.
    """

    def __init__(self, directory: Path | None = None) -> None:
        self.path = (directory or cache_dir()) / CACHE_FILE

    def get(self, key: str) -> Verdict | None:
        """The verdict kept for `key`; None if there is none, or only a provisional one older than `RETRY_S`."""
        entry = self._read().get(key)
        if not isinstance(entry, dict) or not isinstance(entry.get("on"), bool):
            return None
        try:
            timings = [Timing(**entry[name]) if entry.get(name) else None for name in ("with_flash", "without")]
            stale = bool(entry.get("provisional")) and time.time() - float(entry.get("at", 0)) > RETRY_S
        except (TypeError, ValueError):
            return None
        if stale:
            return None
        return Verdict(
            entry["on"], timings[0], timings[1], str(entry.get("reason", "")), bool(entry.get("provisional"))
        )

    def put(self, key: str, verdict: Verdict, note: str) -> None:
        entries = self._read()
        entries[key] = {**asdict(verdict), "note": note, "at": time.time(), "when": time.strftime("%Y-%m-%dT%H:%M:%S")}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile("w", dir=self.path.parent, delete=False, suffix=".tmp") as out:
                json.dump(entries, out, indent=1, sort_keys=True)
            os.replace(out.name, self.path)
        except OSError as exc:
            logger.info("could not keep the flash attention verdict in %s (%s)", self.path, exc)
            with contextlib.suppress(OSError, UnboundLocalError):
                os.unlink(out.name)

    def _read(self) -> dict[str, object]:
        try:
            with open(self.path, encoding="utf-8") as f:
                entries = json.load(f)
        except (OSError, ValueError):
            return {}
        return entries if isinstance(entries, dict) else {}


def cache_dir() -> Path:
    """Where llama-isolate keeps what it measured about this machine."""
    given = os.environ.get(CACHE_ENV)
    if given:
        return Path(given)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "llama-isolate"


def cache_key(model_path: str, n_threads: int, n_threads_batch: int, cache_types: tuple[int, int]) -> tuple[str, str]:
    """(key, a readable note) for a model file on this CPU with this llama.cpp build and these settings."""
    stat = os.stat(model_path)
    cpu = _cpu_identity()
    build = C.llama_print_system_info().decode("utf-8", "replace")
    version = getattr(C, "__version__", "")
    parts = [os.path.realpath(model_path), stat.st_size, stat.st_mtime_ns, cpu, build, version]
    parts += [n_threads, n_threads_batch, *cache_types]
    digest = hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:24]
    note = f"{os.path.basename(model_path)}, {cpu.splitlines()[0]}, {n_threads} threads"
    return digest, note


def _cpu_identity() -> str:
    """The CPU's model name and feature flags (what decides which kernels run)."""
    name, flags = "unknown CPU", ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
        for line in f:
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and name == "unknown CPU":
                name = value.strip()
            elif key in ("flags", "Features") and not flags:
                flags = value.strip()
    return f"{name}\n{flags}"


class Probe:
    """Times flash attention on and off on one model, in two small contexts side by side.

    Example::

        verdict = Probe(model, n_threads=2, n_threads_batch=2, cache_types=(1, 1)).run()
    """

    def __init__(self, model: int, *, n_threads: int, n_threads_batch: int, cache_types: tuple[int, int]) -> None:
        self._model = model
        self._n_vocab = int(C.llama_vocab_n_tokens(C.llama_model_get_vocab(model)))
        self._threads = (n_threads, n_threads_batch)
        self._cache_types = cache_types
        self._batch = C.llama_batch_init(DEEP, 0, 1)
        self._deadline = 0.0

    def run(self) -> Verdict:
        """Measure both settings; when that cannot be done fairly, a verdict of off that says why.

        ggml's threads wait for each other, so a busy neighbour distorts every figure and slows every decode
        (beside two busy processes the probe took 24 s): a machine busy before the probe is not measured, one
        that becomes busy during it has its figures dropped, and a probe past `BUDGET_S` stops where it is.
        """
        before = Reading.now()
        time.sleep(LOOK_S)  # a window to read the machine's load over, not a wait for anything
        if (busy := self._busy(before, "before measuring")) is not None:
            C.llama_batch_free(self._batch)
            return busy
        self._deadline = time.monotonic() + BUDGET_S
        before = Reading.now()
        try:
            with self._context(flash=False) as off, self._context(flash=True) as on:
                if not (off and on):
                    return Verdict(
                        False, reason="llama.cpp could not create the probe's contexts; off", provisional=True
                    )
                verdict = self._compare(off, on)
        except _OutOfTime:
            why = f"measuring took longer than {BUDGET_S:.0f} s (a busy machine, or a slow model); off for now"
            return Verdict(False, reason=why, provisional=True)
        finally:
            C.llama_batch_free(self._batch)
        return self._busy(before, "while measuring") or verdict

    @staticmethod
    def _busy(before: Reading, when: str) -> Verdict | None:
        """A provisional verdict of off if other processes kept the CPUs busy since `before`."""
        others = others_cpu(before, Reading.now())
        if others <= BUSY_CPUS:
            return None
        why = f"other processes kept {others:.1f} CPUs busy {when}; off for now"
        return Verdict(False, reason=why, provisional=True)

    def _compare(self, off: int, on: int) -> Verdict:
        contexts = (off, on)
        prompt = [self._read(ctx, 0, SHALLOW) for ctx in contexts]
        projected = (DEEP + 2 * GENERATE + SHORT_BATCH) * max(prompt) / SHALLOW * 2
        if time.monotonic() + projected > self._deadline:
            return Verdict(False, reason=f"this model is too slow to measure within {BUDGET_S:.0f} s; off")
        shallow = self._alternate(contexts, lambda ctx: self._generate(ctx, SHALLOW))
        deep_prompt = [self._read(ctx, SHALLOW, DEEP - SHALLOW) for ctx in contexts]
        deep = self._alternate(contexts, lambda ctx: self._generate(ctx, DEEP))
        short = self._alternate(contexts, lambda ctx: self._short_batch(ctx, DEEP))
        timings = [
            Timing(
                prompt=(prompt[i] + deep_prompt[i]) / DEEP,
                shallow=shallow[i] / GENERATE,
                deep=deep[i] / GENERATE,
                short_batch=short[i],
            )
            for i in range(2)
        ]
        without, with_flash = timings
        return Verdict(with_flash.turn() < without.turn(), with_flash, without, "measured")

    @staticmethod
    def _alternate(contexts: tuple[int, int], work: Callable[[int], float]) -> list[float]:
        """The best of two runs of `work` on each context, taking turns (off, on, on, off): noise falls on both."""
        best = [float("inf"), float("inf")]
        for i in (0, 1, 1, 0):
            best[i] = min(best[i], work(contexts[i]))
        return best

    def _read(self, ctx: int, start: int, count: int) -> float:
        """Decode `count` prompt tokens at positions `start`...; seconds taken."""
        self._fill(start, count, last_logits=True)
        return self._decode(ctx)

    def _generate(self, ctx: int, depth: int) -> float:
        """Decode GENERATE tokens one at a time after position `depth`, then take them back out; seconds."""
        total = 0.0
        for i in range(GENERATE):
            self._fill(depth + i, 1, last_logits=True)
            total += self._decode(ctx)
        C.llama_memory_seq_rm(C.llama_get_memory(ctx), 0, depth, -1)
        return total

    def _short_batch(self, ctx: int, depth: int) -> float:
        self._fill(depth, SHORT_BATCH, last_logits=True)
        elapsed = self._decode(ctx)
        C.llama_memory_seq_rm(C.llama_get_memory(ctx), 0, depth, -1)
        return elapsed

    def _fill(self, start: int, count: int, *, last_logits: bool) -> None:
        batch = self._batch
        for i in range(count):
            batch.token[i] = (start + i) * 7919 % self._n_vocab  # any tokens: the content does not change the time
            batch.pos[i] = start + i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = last_logits and i == count - 1
        batch.n_tokens = count

    def _decode(self, ctx: int) -> float:
        if time.monotonic() > self._deadline:
            raise _OutOfTime
        started = time.perf_counter()
        rc = int(C.llama_decode(ctx, self._batch))
        elapsed = time.perf_counter() - started
        if rc != 0:
            raise RuntimeError(f"llama_decode failed with code {rc} while measuring flash attention")
        return elapsed

    @contextlib.contextmanager
    def _context(self, *, flash: bool) -> Iterator[int]:
        params = C.llama_context_default_params()
        params.n_ctx = DEEP + SHORT_BATCH + GENERATE + 64
        params.n_batch = params.n_ubatch = DEEP
        params.n_seq_max = 1
        params.n_threads, params.n_threads_batch = self._threads
        params.flash_attn_type = 1 if flash else 0
        params.type_k, params.type_v = self._cache_types
        params.no_perf = True
        ctx = C.llama_init_from_model(self._model, params)
        try:
            yield int(ctx or 0)
        finally:
            if ctx:
                C.llama_free(ctx)


def decide(
    model: int, model_path: str, *, n_threads: int, n_threads_batch: int, cache_types: tuple[int, int]
) -> Verdict:
    """Whether "auto" means flash attention on, for this model on this machine: from the cache, else measured."""
    key, note = cache_key(model_path, n_threads, n_threads_batch, cache_types)
    cache = FlashCache()
    verdict = cache.get(key)
    if verdict is not None:
        return verdict
    try:
        verdict = Probe(model, n_threads=n_threads, n_threads_batch=n_threads_batch, cache_types=cache_types).run()
    except RuntimeError as exc:
        verdict = Verdict(False, reason=f"the probe failed ({exc}); off", provisional=True)
    cache.put(key, verdict, note)
    return verdict
