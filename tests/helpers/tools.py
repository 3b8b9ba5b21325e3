"""Two tools the default model is asked to call (get_weather, get_time), and a load whose template shows tools."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llama_isolate import CHATML_TOOLS_TEMPLATE, ContextParams, LlamaLoad, SamplerParams

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 30}, "unit": {"enum": ["C", "F"]}},
    "required": ["city"],
    "additionalProperties": False,
}
TOOLS = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "The weather in a city", "parameters": WEATHER},
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "The time now",
            "parameters": {"type": "object", "properties": {}},
        },
    },
]


def tools_load(model_path: Path, template: str = CHATML_TOOLS_TEMPLATE) -> LlamaLoad:
    """The default model, greedy, 2 slots, with a chat template that shows tools."""
    return LlamaLoad(
        path=model_path,
        context_params=ContextParams(n_ctx=2048, n_parallel=2),
        chat_template=template,
        sampler_params=SamplerParams(greedy=True),
    )


def schema_of(name: str) -> dict[str, Any]:
    return next(t["function"]["parameters"] for t in TOOLS if t["function"]["name"] == name)
