"""t2l_vllm: Text-to-LoRA for vLLM. Describe a task in words; get a LoRA adapter; serve it.

The public API, imported lazily so that `import t2l_vllm` does not import vLLM:

    T2LEngine          offline batch inference: vllm.LLM with an adapter per prompt
    AdapterGenerator   descriptions -> checked LoRA adapters, in one batched pass
    LoRAAdapter        an adapter value; `save_peft` / `load_peft`
    EmbeddingRouter    picks a task description for a query without one
    affinity_headers   the X-Session-ID that keeps a description on one replica behind vllm-router
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "T2LEngine": "t2l_vllm.vllm_plugin.offline",
    "AdapterGenerator": "t2l_vllm.generator",
    "GeneratorSettings": "t2l_vllm.generator",
    "LoRAAdapter": "t2l_vllm.adapters",
    "EmbeddingRouter": "t2l_vllm.router",
    "TaskLibrary": "t2l_vllm.router",
    "T2LError": "t2l_vllm.errors",
    "affinity_headers": "t2l_vllm.descriptions",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 't2l_vllm' has no attribute {name!r}")
