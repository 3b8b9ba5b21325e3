"""The `llama-isolate` command: run, chat, embed, bench, tui, serve.

Errors are one line on stderr and a non-zero exit, never a traceback:
1 for a failure, 2 for a bad argument (checked before the model loads),
130 after Ctrl-C, 141 when stdout was closed (``| head -1``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import TextIO

from .. import __version__
from .._errors import LlamaError
from .._images import LlamaImage
from .._model_path import default_model_path
from .._params import ContextParams, LlamaLoad, SamplerParams
from .._sync import SyncLlamaParent
from . import serve as serve_command

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_PIPE_CLOSED = 141  # 128 + SIGPIPE, as a program killed by a closed pipe reports


class PipeClosed(Exception):
    """Whoever read stdout went away (``llama-isolate run ... | head -1``)."""


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    model = common.add_argument_group("model")
    model.add_argument("--model", metavar="PATH", help="GGUF model file (default: the embedded SmolLM2-135M)")
    model.add_argument("--mmproj", metavar="PATH", help="multimodal projector GGUF (enables --image)")
    model.add_argument("--n-ctx", type=int, default=4096, metavar="N", help="context window (default 4096)")
    model.add_argument("--threads", type=int, metavar="N", help="CPU threads (default: all available)")
    model.add_argument("--verbose", action="store_true", help="show llama.cpp's own log on stderr")
    sampling = common.add_argument_group("sampling")
    sampling.add_argument("--max-tokens", type=int, metavar="N", help="most tokens per answer (default: no limit)")
    sampling.add_argument("--temperature", type=float, default=0.8, metavar="T")
    sampling.add_argument("--top-k", type=int, default=40, metavar="K")
    sampling.add_argument("--top-p", type=float, default=0.95, metavar="P")
    sampling.add_argument("--min-p", type=float, default=0.05, metavar="P")
    sampling.add_argument("--repeat-penalty", type=float, default=1.0, metavar="X")
    sampling.add_argument("--seed", type=int, metavar="N", help="random seed (default: a new one each time)")
    sampling.add_argument("--greedy", action="store_true", help="always take the most likely token")
    sampling.add_argument("--stop", action="append", default=[], metavar="TEXT", help="stop string (repeatable)")

    parser = argparse.ArgumentParser(
        prog="llama-isolate", description="A llama.cpp model in a worker process: run, chat, embed, bench, tui, serve."
    )
    parser.add_argument("--version", action="version", version=f"llama-isolate {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser("run", parents=[common], help="stream one answer to stdout")
    run.add_argument("prompt", help="the prompt")
    run.add_argument("--image", action="append", default=[], metavar="PATH", help="an image (repeatable)")
    chat = commands.add_parser("chat", parents=[common], help="an interactive conversation (or piped stdin)")
    chat.add_argument("--system", metavar="TEXT", help="a system message to start with")
    embed = commands.add_parser("embed", parents=[common], help="print the embedding of TEXT as JSON")
    embed.add_argument("text")
    embed.add_argument("--normalize", action="store_true", help="scale the vector to unit length")
    bench = commands.add_parser("bench", help="run the benchmarks and print their ratios")
    bench.add_argument(
        "sections",
        nargs="*",
        metavar="SECTION",
        help="decode, throughput, stall, parent_cpu, contention, stop, ttft, choices (these by default); soak, "
        "serve, prefix, replicas, speculative, ray (only when named; see bench/README.md)",
    )
    tui = commands.add_parser("tui", parents=[common], help="two conversations side by side (needs textual)")
    tui.add_argument("--n-parallel", type=int, default=2, metavar="N", help="sequences decoded together (default 2)")
    serve_command.add_parser(commands)
    return parser


# The sampler options whose flag (--top-k) is the field's name (top_k).
_SAMPLER_FLAGS = ("temperature", "top_k", "top_p", "min_p", "repeat_penalty", "seed", "greedy")


def _load(args: argparse.Namespace, *, embeddings: bool = False, n_parallel: int = 1) -> LlamaLoad:
    """The load the options describe; ValueError (a usage error) names a bad value."""
    if args.max_tokens is not None and args.max_tokens < 1:
        raise ValueError(f"--max-tokens must be >= 1, got {args.max_tokens}")
    context: dict[str, object] = {"n_ctx": args.n_ctx, "embeddings": embeddings, "n_parallel": n_parallel}
    if args.threads is not None:
        context |= {"n_threads": args.threads, "n_threads_batch": args.threads}
    sampler = SamplerParams(stop=tuple(args.stop), **{name: getattr(args, name) for name in _SAMPLER_FLAGS})
    return LlamaLoad(
        path=args.model or default_model_path(),
        mmproj_path=args.mmproj,
        context_params=ContextParams(**context),  # type: ignore[arg-type]
        sampler_params=sampler,
        verbose=args.verbose,
    )


class ProgressBar:
    """A load progress bar on stderr, drawn only when stderr is a terminal."""

    def __init__(self, label: str, stream: TextIO | None = None) -> None:
        self._label = label
        self._stream = stream or sys.stderr
        self._shown = self._stream.isatty()
        self._last = -1

    def __call__(self, fraction: float) -> None:
        percent = int(fraction * 100)
        if not self._shown or percent == self._last:
            return
        self._last = percent
        filled = percent * 30 // 100
        self._stream.write(f"\r{self._label} [{'#' * filled}{'.' * (30 - filled)}] {percent:3d}%")
        self._stream.flush()

    def done(self) -> None:
        if self._shown and self._last >= 0:
            self._stream.write("\r\033[K")
            self._stream.flush()


@contextlib.contextmanager
def _ready(load: LlamaLoad) -> Iterator[SyncLlamaParent]:
    """A loaded parent (with a progress bar on a terminal), disposed on the way out."""
    parent = SyncLlamaParent(load)
    bar = ProgressBar(f"loading {os.path.basename(os.fspath(load.path))}")
    try:
        try:
            parent.init(on_progress=bar)
        finally:
            bar.done()
        yield parent
    finally:
        parent.dispose()


class _Output:
    """Writes tokens to stdout as they come (on the parent's loop thread); a closed pipe stops the answer."""

    def __init__(self, parent: SyncLlamaParent) -> None:
        self._parent = parent
        self.closed = False
        self._stopping: asyncio.Task[None] | None = None  # held, so that the loop cannot drop it

    def write(self, text: str) -> None:
        if self.closed:
            return
        try:
            sys.stdout.write(text)
            sys.stdout.flush()
        except BrokenPipeError:
            self.closed = True
            self._stopping = asyncio.get_running_loop().create_task(self._parent.parent.stop())


@contextlib.contextmanager
def _held_interrupts() -> Iterator[Callable[[], bool]]:
    """While the block stops an answer, a further Ctrl-C is only noted; the block's caller asks if one came.

    Python raises KeyboardInterrupt wherever the main thread happens to be, a
    weakref callback or a finalizer included, where it is printed as "Exception
    ignored" and lost. Stopping takes milliseconds; a second press in them is
    honoured right after.
    """
    pressed: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda number, _frame: pressed.append(number))
    try:
        yield lambda: bool(pressed)
    finally:
        signal.signal(signal.SIGINT, previous)


def _answer(parent: SyncLlamaParent, send: Callable[[], str]) -> bool:
    """Send one prompt and stream its answer; returns False if Ctrl-C stopped it.

    Raises `PipeClosed` when stdout went away, `LlamaError` when the prompt failed.
    """
    output = _Output(parent)
    subscription = parent.stream.listen(output.write)
    completed = True
    try:
        prompt_id = send()
        try:
            event = parent.wait_for_completion(prompt_id)
        except KeyboardInterrupt:
            with _held_interrupts() as again:
                parent.stop()
                event = parent.wait_for_completion(prompt_id)
            sys.stderr.write("\n[stopped]\n")
            completed = False
            if again():
                raise KeyboardInterrupt from None  # pressed twice: leave, once the answer has stopped
    finally:
        subscription.cancel()
    output.write("\n")
    if output.closed:
        raise PipeClosed
    if not event.success:
        raise LlamaError(event.error or "the prompt failed")
    return completed


def _run(args: argparse.Namespace, load: LlamaLoad) -> int:
    images = [LlamaImage.from_file(path) for path in args.image]
    with _ready(load) as parent:
        if images:
            send = functools.partial(parent.send_prompt_with_images, args.prompt, images, max_tokens=args.max_tokens)
        else:
            send = functools.partial(parent.send_prompt, args.prompt, max_tokens=args.max_tokens)
        return 0 if _answer(parent, send) else EXIT_INTERRUPTED


def _chat(args: argparse.Namespace, load: LlamaLoad) -> None:
    interactive = sys.stdin.isatty()
    with _ready(load) as parent:
        if args.system:
            parent.messages.append({"role": "system", "content": args.system})
        if interactive:
            sys.stderr.write("Type a message; /quit or Ctrl-D ends, Ctrl-C stops an answer.\n")
        while (line := _read_line(interactive)) is not None:
            if line.strip() == "/quit":
                break
            if line.strip():
                _answer(parent, functools.partial(parent.send_prompt, line, max_tokens=args.max_tokens))


def _read_line(interactive: bool) -> str | None:
    try:
        if interactive:
            return input("> ")
        line = sys.stdin.readline()
        return line.rstrip("\n") if line else None
    except EOFError:
        return None
    except KeyboardInterrupt:  # Ctrl-C at the prompt ends the chat
        sys.stderr.write("\n")
        return None


def _embed(args: argparse.Namespace, load: LlamaLoad) -> None:
    with _ready(load) as parent:
        print(json.dumps(parent.get_embeddings(args.text, normalize=args.normalize)))


def _bench(args: argparse.Namespace, load: None) -> None:
    from .._bench.run import main as bench

    bench(args.sections)


def _tui(args: argparse.Namespace, load: LlamaLoad) -> None:
    try:
        from .tui import ChatApp
    except ImportError as exc:
        raise LlamaError("the tui needs textual: pip install 'llama-isolate[tui]'") from exc
    ChatApp(load, max_tokens=args.max_tokens).run()


def _check_bench(args: argparse.Namespace) -> None:
    from .._bench.run import SECTIONS

    unknown = [name for name in args.sections if name not in SECTIONS]
    if unknown:
        raise ValueError(f"unknown benchmark section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")


# Each command: what it does with the parsed options and the load they describe, and that load
# (built, and so checked, before anything starts).
COMMANDS: dict[str, tuple[Callable[..., int | None], Callable[[argparse.Namespace], object]]] = {
    "run": (_run, _load),
    "chat": (_chat, _load),
    "embed": (_embed, functools.partial(_load, embeddings=True)),
    "bench": (_bench, _check_bench),
    "tui": (_tui, lambda args: _load(args, n_parallel=args.n_parallel)),
    "serve": (serve_command.run, serve_command.describe),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `llama-isolate` and `python -m llama_isolate`; returns the exit code."""
    args = _parser().parse_args(argv)
    command, describe = COMMANDS[args.command]
    try:
        load = describe(args)
    except ValueError as exc:
        sys.stderr.write(f"llama-isolate: error: {exc}\n")
        return EXIT_USAGE
    try:
        code = command(args, load)
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        code = EXIT_INTERRUPTED
    except PipeClosed:
        _silence_stdout()
        return EXIT_PIPE_CLOSED
    except (LlamaError, OSError, ValueError) as exc:
        sys.stderr.write(f"llama-isolate: error: {exc}\n")
        return EXIT_ERROR
    if code == EXIT_INTERRUPTED:
        # Leaving on Ctrl-C, with the worker already gone: one more press while the interpreter shuts down
        # has nothing left to stop, and would only print a traceback from threading's shutdown.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    return code or 0


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that flushing it at exit does not fail on the closed pipe again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
