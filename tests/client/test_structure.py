"""The package's shape: the prompt queue on its own, no import cycles, a worker without the asyncio facade."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import llama_isolate
from llama_isolate import LlamaQueueFull, SamplerParams
from llama_isolate._client.queue import PromptQueue, PromptRecord

PACKAGE = Path(llama_isolate.__file__).parent


class Scope:
    def __init__(self, name: str) -> None:
        self.id = name
        self.messages: list[dict[str, object]] = []


def record(name: str, scope: Scope | None = None) -> PromptRecord:
    return PromptRecord(id=name, scope=scope, text=name, sampler=SamplerParams(), max_tokens=4)  # type: ignore[arg-type]


def test_the_queue_starts_prompts_in_send_order_up_to_its_slots() -> None:
    queue = PromptQueue(slots=2, max_queue=None)
    for name in "abc":
        queue.push(record(name, Scope(name)))
    assert [queue.pop_next().id, queue.pop_next().id] == ["a", "b"]  # type: ignore[union-attr]
    assert queue.pop_next() is None  # both slots taken
    assert len(queue) == 1
    queue.finish("a")
    assert queue.pop_next().id == "c"  # type: ignore[union-attr]


def test_a_busy_conversation_waits_and_lets_others_pass() -> None:
    left, right = Scope("left"), Scope("right")
    queue = PromptQueue(slots=2, max_queue=None)
    for prompt in (record("l1", left), record("l2", left), record("r1", right)):
        queue.push(prompt)
    assert queue.pop_next().id == "l1"  # type: ignore[union-attr]
    assert queue.pop_next().id == "r1"  # type: ignore[union-attr]  # l2 needs l1's reply first
    queue.finish("l1")
    assert queue.pop_next().id == "l2"  # type: ignore[union-attr]
    assert queue.has_scope("left") and not queue.has_scope("nobody")


def test_max_queue_refuses_and_changes_nothing() -> None:
    queue = PromptQueue(slots=1, max_queue=1)
    queue.push(record("a"))
    with pytest.raises(LlamaQueueFull, match="max_queue=1"):
        queue.push(record("b"))
    assert [r.id for r in queue] == ["a"]


def test_removed_and_drained_prompts_come_out_in_order() -> None:
    one = Scope("one")
    queue = PromptQueue(slots=1, max_queue=None)
    for prompt in (record("a", one), record("b"), record("c", one)):
        queue.push(prompt)
    running = queue.pop_next()
    assert running is not None and running.id == "a"
    assert [r.id for r in queue.remove_waiting(lambda r: r.scope is one)] == ["c"]
    assert [r.id for r in queue.drain()] == ["b", "a"]
    assert len(queue) == 0 and not queue.running


def imports(module: Path) -> set[str]:
    """The package modules `module` imports (at any level, TYPE_CHECKING included)."""
    name = ".".join(module.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = name if module.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            target = f"{base}.{node.module}" if node.module else base
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_the_package_has_no_import_cycle() -> None:
    modules = {
        ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): path
        for path in PACKAGE.rglob("*.py")
    }
    graph = {name: {m for m in imports(path) if m in modules and m != name} for name, path in modules.items()}
    # The package itself imports its submodules; a submodule importing the package is the only way back up.
    graph["llama_isolate"] = set()

    def cycle_from(start: str) -> list[str] | None:
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    return [*path, start]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*path, nxt]))
        return None

    cycles = [c for name in graph if (c := cycle_from(name))]
    assert cycles == []


def test_the_worker_does_not_load_the_asyncio_facade_nor_the_grammar_compilers() -> None:
    code = (
        "import sys, llama_isolate._worker.main\n"
        "print(sorted(m for m in sys.modules if m == 'asyncio' or m.startswith(('llama_isolate._parent',\n"
        "    'llama_isolate._sync', 'llama_isolate._client', 'llama_isolate._grammar'))))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_ray_is_imported_only_for_ray() -> None:
    code = (
        "import sys, llama_isolate, llama_isolate.server, llama_isolate.ray\n"
        "from llama_isolate._cli import commands as _cli, serve as _serve_cli\n"
        "_serve_cli.describe(_cli._parser().parse_args(['serve', '--replicas', '2']))\n"
        "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_the_readme_draws_every_folder_and_module_of_the_package() -> None:
    readme = (PACKAGE.parent.parent / "README.md").read_text()
    drawing = readme.split("### The folders, and the way of a prompt", 1)[1].split("A prompt from the library", 1)[0]
    names = {p.name for p in PACKAGE.iterdir() if p.name != "__pycache__" and p.suffix in (".py", "")}
    missing = sorted(n + ("/" if (PACKAGE / n).is_dir() else "") for n in names if n not in drawing)
    assert missing == []
