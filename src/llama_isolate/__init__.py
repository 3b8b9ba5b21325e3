"""llama_isolate: a llama.cpp model in a worker process, behind a small asyncio API.

The model, its context and all decoding live in a separate worker process;
the caller's event loop only sends commands and receives tokens and events.
A crash inside llama.cpp ends the worker, never the caller.

Example::

    import asyncio
    from llama_isolate import LlamaLoad, LlamaParent, default_model_path

    async def main() -> None:
        async with LlamaParent(LlamaLoad(path=default_model_path())) as parent:
            pid = await parent.send_prompt("Why is the sky blue?")
            sub = parent.stream.listen(lambda t: print(t, end="", flush=True))
            await parent.wait_for_completion(pid)
            sub.cancel()

    asyncio.run(main())
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._checks import check_messages
from ._errors import (
    LlamaContextLengthExceeded,
    LlamaError,
    LlamaFeatureNotEnabled,
    LlamaInvalidMmproj,
    LlamaInvalidModel,
    LlamaLoadError,
    LlamaLoadTimeout,
    LlamaModelNotFound,
    LlamaOutOfMemory,
    LlamaQueueFull,
    LlamaRequestError,
    LlamaSchemaError,
    LlamaStateError,
    LlamaStatusError,
    LlamaTypeError,
    LlamaValueError,
    LlamaWorkerDied,
    LlamaWorkerDiedOnLoad,
)
from ._events import (
    CompletionChoice,
    CompletionEvent,
    CompletionTimings,
    Embedding,
    LlamaStatus,
    ModelInfo,
    TokenLogprob,
    ToolCall,
    ToolCallDelta,
)
from ._images import MEDIA_MARKER, LlamaImage
from ._model_path import default_model_path
from ._options import PromptFields, PromptOptions
from ._params import ContextParams, LlamaLoad, ModelParams, SamplerParams, Speculative
from ._restart import RestartPolicy

if TYPE_CHECKING:
    from ._grammar.tools import CHATML_TOOLS_TEMPLATE
    from ._handle import PromptHandle
    from ._parent import LlamaParent, default_init_timeout
    from ._scope import LlamaScope
    from ._streams import EventStream, Subscription, TokenStream
    from ._sync import SyncLlamaParent, SyncLlamaScope, SyncPromptHandle, SyncStream

# The asyncio facade and the grammar compilers are imported on first use, so
# that the worker process, which imports this package too, never loads them
# (nor asyncio).
_LAZY = {
    "PromptHandle": "._handle",
    "CHATML_TOOLS_TEMPLATE": "._grammar.tools",
    "LlamaParent": "._parent",
    "default_init_timeout": "._parent",
    "LlamaScope": "._scope",
    "EventStream": "._streams",
    "Subscription": "._streams",
    "TokenStream": "._streams",
    "SyncLlamaParent": "._sync",
    "SyncLlamaScope": "._sync",
    "SyncPromptHandle": "._sync",
    "SyncStream": "._sync",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'llama_isolate' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


__version__ = "0.1.0"

__all__ = [
    "CHATML_TOOLS_TEMPLATE",
    "MEDIA_MARKER",
    "CompletionChoice",
    "CompletionEvent",
    "CompletionTimings",
    "ContextParams",
    "Embedding",
    "EventStream",
    "LlamaContextLengthExceeded",
    "LlamaError",
    "LlamaFeatureNotEnabled",
    "LlamaImage",
    "LlamaInvalidMmproj",
    "LlamaInvalidModel",
    "LlamaLoad",
    "LlamaLoadError",
    "LlamaLoadTimeout",
    "LlamaModelNotFound",
    "LlamaOutOfMemory",
    "LlamaParent",
    "LlamaQueueFull",
    "LlamaRequestError",
    "LlamaSchemaError",
    "LlamaScope",
    "LlamaStateError",
    "LlamaStatus",
    "LlamaStatusError",
    "LlamaTypeError",
    "LlamaValueError",
    "LlamaWorkerDied",
    "LlamaWorkerDiedOnLoad",
    "ModelInfo",
    "ModelParams",
    "PromptFields",
    "PromptHandle",
    "PromptOptions",
    "RestartPolicy",
    "SamplerParams",
    "Speculative",
    "Subscription",
    "SyncLlamaParent",
    "SyncLlamaScope",
    "SyncPromptHandle",
    "SyncStream",
    "TokenLogprob",
    "TokenStream",
    "ToolCall",
    "ToolCallDelta",
    "__version__",
    "check_messages",
    "default_init_timeout",
    "default_model_path",
]
