"""Every public name is documented, with an example; the API contract's names exist."""

from __future__ import annotations

import inspect

import llama_isolate
import llama_isolate.testing

CONTRACT = [  # the names ../shared/API.md promises
    "LlamaParent", "LlamaScope", "LlamaLoad", "ModelParams", "ContextParams", "SamplerParams",
    "default_model_path", "TokenStream", "EventStream", "CompletionEvent", "LlamaStatus", "LlamaImage",
    "LlamaError", "LlamaLoadError", "LlamaQueueFull", "SyncLlamaParent",
]  # fmt: skip


CONSTANTS = ("MEDIA_MARKER", "CHATML_TOOLS_TEMPLATE")  # strings: documented in the README's table and docs/


def public(module: object) -> list[tuple[str, object]]:
    return [(n, getattr(module, n)) for n in module.__all__ if not n.startswith("__") and n not in CONSTANTS]  # type: ignore[attr-defined]


def test_the_contracts_names_are_exported() -> None:
    assert set(CONTRACT) <= set(llama_isolate.__all__)
    assert all(hasattr(llama_isolate, name) for name in llama_isolate.__all__)


def test_every_public_name_has_a_docstring_with_an_example() -> None:
    undocumented = [
        name
        for module in (llama_isolate, llama_isolate.testing)
        for name, obj in public(module)
        if "Example" not in (inspect.getdoc(obj) or "") and not isinstance(obj, type(llama_isolate.testing))
    ]
    assert undocumented == []


def test_every_public_method_and_property_has_a_docstring() -> None:
    bare = []
    for name, obj in public(llama_isolate):
        if not inspect.isclass(obj):
            continue
        for member, value in vars(obj).items():
            target = value.fget if isinstance(value, property) else value
            if member.startswith("_") or not callable(target):
                continue
            if not (target.__doc__ or "").strip():
                bare.append(f"{name}.{member}")
    assert bare == []


def test_the_contracts_per_prompt_options_exist() -> None:
    for owner in (llama_isolate.LlamaParent, llama_isolate.LlamaScope, llama_isolate.SyncLlamaParent):
        options = set(inspect.signature(owner.send_prompt).parameters)
        assert {"json_schema", "tools", "tool_choice", "logprobs", "n"} <= options, owner
    assert {"id", "name", "arguments"} <= set(inspect.signature(llama_isolate.ToolCall).parameters)
    assert "tool_calls" in inspect.signature(llama_isolate.CompletionEvent).parameters
