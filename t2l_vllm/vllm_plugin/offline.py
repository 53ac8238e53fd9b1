"""Offline batch inference: `vllm.LLM` with a generated adapter per prompt.

Each prompt (or conversation) carries its own task description, or none. The
descriptions missing from this engine's store are turned into adapters in one
hypernetwork pass, written as PEFT folders, and handed to vLLM as LoRA requests,
so the whole list runs as one multi-LoRA batch.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Sequence
from typing import Any

from ..adapter_store import AdapterStore, StoredAdapter
from ..default_model import default_paths
from ..errors import ConfigError
from ..generator import AdapterGenerator, GeneratorSettings
from ..hypernet.shapes import check_shapes_fit, load_base_shapes

logger = logging.getLogger(__name__)

Descriptions = Sequence[str | None] | str | None


def resolve_model_and_hypernet(model: str | None, hypernet: str | None) -> tuple[str, str]:
    """Fills in the embedded default: no model and no hypernet -> both default;
    a hypernet alone -> the base model it was made for."""
    if hypernet is None:
        if model is not None:
            raise ConfigError(
                "`--model` needs `--hypernet` too: the embedded hypernetwork only fits the embedded base model."
            )
        paths = default_paths()
        return str(paths.base_model), str(paths.hypernet)
    if model is None:
        from ..hypernet.checkpoint import load_config

        model = load_config(hypernet)[0].base.name
        if not model:
            raise ConfigError(f"hypernetwork `{hypernet}` does not name its base model; pass `--model`.")
    return model, hypernet


class T2LEngine:
    """A vLLM engine that adapts itself to a task description per prompt.

    Keyword arguments not named here go to `vllm.LLM` unchanged (for example
    `max_loras`, `max_cpu_loras`, `dtype`, `tensor_parallel_size`).
    """

    def __init__(
        self,
        model: str | None = None,
        hypernet: str | None = None,
        *,
        generator_settings: GeneratorSettings = GeneratorSettings(),
        generator: AdapterGenerator | None = None,
        **llm_kwargs: Any,
    ) -> None:
        from vllm import LLM

        model, hypernet = resolve_model_and_hypernet(model, hypernet)
        self.generator = generator or AdapterGenerator.from_checkpoint(hypernet, generator_settings)
        config = self.generator.config
        check_shapes_fit(config.base, load_base_shapes(model), list(config.lora.target_modules))
        llm_kwargs.setdefault("enable_lora", True)
        llm_kwargs["max_lora_rank"] = max(llm_kwargs.get("max_lora_rank", 0), config.lora.rank)
        self.model = model
        self.store = AdapterStore()
        weakref.finalize(self, self.store.close)  # the folders live on tmpfs: never leave them behind
        self.llm = LLM(model=model, **llm_kwargs)

    def adapters_for(self, descriptions: Sequence[str | None]) -> list[StoredAdapter | None]:
        """Stored adapters for descriptions (None stays None); missing ones in one pass."""
        names = [None if d is None else self.generator.name_for(d) for d in descriptions]
        missing: dict[str, str] = {}
        for name, text in zip(names, descriptions):
            if name is not None and self.store.get(name) is None:
                missing.setdefault(name, text)  # type: ignore[arg-type]
        for adapter in self.generator.generate(list(missing.values())):
            self.store.put(adapter)
        return [None if name is None else self.store.get(name) for name in names]

    def lora_requests(self, descriptions: Sequence[str | None]):
        return [None if s is None else lora_request(s) for s in self.adapters_for(descriptions)]

    def generate(self, prompts: Sequence[str], descriptions: Descriptions = None, sampling_params: Any = None, **kwargs: Any):
        """`vllm.LLM.generate` with one adapter per prompt; returns vLLM's outputs."""
        requests = self.lora_requests(_per_item(descriptions, len(prompts)))
        return self.llm.generate(list(prompts), sampling_params, lora_request=requests, **kwargs)

    def chat(self, conversations: Sequence[list[dict[str, Any]]], descriptions: Descriptions = None, sampling_params: Any = None, **kwargs: Any):
        """`vllm.LLM.chat` over several conversations, one adapter per conversation."""
        requests = self.lora_requests(_per_item(descriptions, len(conversations)))
        return self.llm.chat([list(c) for c in conversations], sampling_params, lora_request=requests, **kwargs)

    def close(self) -> None:
        """Removes the adapter folders; vLLM's engine is shut down with the LLM object."""
        self.store.close()

    def __enter__(self) -> "T2LEngine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def lora_request(stored: StoredAdapter):
    """The `vllm.lora.request.LoRARequest` that makes vLLM load a stored adapter."""
    from vllm.lora.request import LoRARequest

    return LoRARequest(lora_name=stored.name, lora_int_id=stored.int_id, lora_path=str(stored.path))


def greedy(max_tokens: int):
    """vLLM sampling parameters for greedy decoding (so callers need not import vLLM)."""
    from vllm import SamplingParams

    return SamplingParams(temperature=0.0, max_tokens=max_tokens)


def _per_item(descriptions: Descriptions, n: int) -> list[str | None]:
    if descriptions is None or isinstance(descriptions, str):
        return [descriptions] * n
    descriptions = list(descriptions)
    if len(descriptions) != n:
        raise ConfigError(f"got {len(descriptions)} descriptions for {n} prompts; give one per prompt (None for none).")
    return descriptions
