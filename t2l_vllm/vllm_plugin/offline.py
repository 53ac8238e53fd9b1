"""Offline batch inference: `vllm.LLM` with a generated adapter per prompt.

The offline engine is the server without HTTP: it starts its own adapter service
(the process that generates, caches and stores adapters for a deployment) and
leases adapters from it exactly as an API server does, so folders stay within the
cache's bounds however many descriptions pass through, and names and ids are the
ones every server computes. Each prompt (or conversation) carries its own task
description, or none; the missing adapters are generated in one batched pass and
the prompts run as one vLLM multi-LoRA batch.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

from ..cache import CacheSettings
from ..default_model import default_paths, engine_defaults
from ..errors import ConfigError
from ..generator import GeneratorSettings
from ..hypernet.checkpoint import load_config
from ..service.client import service_socket_path
from ..service.link import BlockingServiceLink
from ..service.deployment import check_deployment
from ..service.settings import ServiceSettings
from .configured import CHECKED_ENV
from .internals import check_fixes
from .lora_registry import lora_request

logger = logging.getLogger(__name__)

Task = str | list[dict[str, Any]]  # a description, or a mix: [{"description": ..., "weight": ...}, ...]
Descriptions = Sequence[Task | None] | Task | None
_ENGINES = itertools.count()


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
        cache_settings: CacheSettings = CacheSettings(),
        adapter_dir: str | None = None,
        **llm_kwargs: Any,
    ) -> None:
        from vllm import LLM

        check_fixes()
        model, hypernet = resolve_model_and_hypernet(model, hypernet)
        self.settings = ServiceSettings(hypernet, adapter_dir, generator_settings, cache_settings, base_model=model)
        config = check_deployment(self.settings, model, llm_kwargs.setdefault("enable_lora", True))
        os.environ[CHECKED_ENV] = "1"  # checked: a $T2L_VLLM_CONFIG file is not this engine's settings
        llm_kwargs["max_lora_rank"] = max(llm_kwargs.get("max_lora_rank", 0), config.lora.rank)
        llm_kwargs.update(engine_defaults(model, llm_kwargs))
        self.model = model
        self.adapters = BlockingServiceLink(service_socket_path(f"offline-{os.getpid()}-{next(_ENGINES)}"), self.settings)
        self._finalizer = weakref.finalize(self, self.adapters.close)  # the service removes its folders when we leave
        self.llm = LLM(model=model, **llm_kwargs)

    @property
    def fingerprint(self) -> str:
        """The hypernetwork's fingerprint (names every adapter it generates)."""
        return self.adapters.link.hello.fingerprint

    def generate(self, prompts: Sequence[str], descriptions: Descriptions = None, sampling_params: Any = None, **kwargs: Any) -> list:
        """`vllm.LLM.generate` with one adapter per prompt; returns vLLM's outputs, in order."""
        prompts = list(prompts)
        return self._run(prompts, _per_item(descriptions, len(prompts)), lambda part, loras: self.llm.generate(part, sampling_params, lora_request=loras, **kwargs))

    def chat(self, conversations: Sequence[list[dict[str, Any]]], descriptions: Descriptions = None, sampling_params: Any = None, **kwargs: Any) -> list:
        """`vllm.LLM.chat` over several conversations, one adapter per conversation."""
        conversations = [list(c) for c in conversations]
        return self._run(conversations, _per_item(descriptions, len(conversations)), lambda part, loras: self.llm.chat(part, sampling_params, lora_request=loras, **kwargs))

    def _run(self, items: list, descriptions: list[Task | None], call) -> list:
        """Runs `call(items, lora_requests)` in parts whose distinct descriptions fit the adapter cache,
        holding each part's leases until vLLM has finished it."""
        outputs: list = []
        for start, stop in _parts(descriptions, self.settings.cache.max_entries):
            part = descriptions[start:stop]
            distinct = {_key(d): d for d in part if d is not None}
            leases = dict(zip(distinct, self.adapters.acquire_all(list(distinct.values()))))
            try:
                outputs.extend(call(items[start:stop], [None if d is None else lora_request(leases[_key(d)].stored) for d in part]))
            finally:
                for lease in leases.values():
                    lease.release()
        return outputs

    def close(self) -> None:
        """Leaves the adapter service, which removes its folders; vLLM's engine goes with the LLM object."""
        self._finalizer()

    def __enter__(self) -> "T2LEngine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def greedy(max_tokens: int):
    """vLLM sampling parameters for greedy decoding (so callers need not import vLLM)."""
    from vllm import SamplingParams

    return SamplingParams(temperature=0.0, max_tokens=max_tokens)


def _key(task: Task) -> str:
    """A hashable stand-in for a description or a mix, to share one lease among the prompts that ask for it."""
    return task if isinstance(task, str) else json.dumps(task, sort_keys=True)


def _parts(descriptions: Sequence[Task | None], max_distinct: int) -> Iterator[tuple[int, int]]:
    """Consecutive index ranges, each with at most `max_distinct` distinct descriptions."""
    start, seen = 0, set()
    for i, description in enumerate(descriptions):
        key = None if description is None else _key(description)
        if key is not None and key not in seen and len(seen) == max_distinct:
            yield start, i
            start, seen = i, set()
        if key is not None:
            seen.add(key)
    if start < len(descriptions):
        yield start, len(descriptions)


def _per_item(descriptions: Descriptions, n: int) -> list[Task | None]:
    """One task per prompt: None, a description or a mix applies to every prompt; a sequence gives each its own."""
    if descriptions is None or isinstance(descriptions, str) or _is_mix(descriptions):
        return [descriptions] * n  # type: ignore[list-item]
    descriptions = list(descriptions)
    if len(descriptions) != n:
        raise ConfigError(f"got {len(descriptions)} descriptions for {n} prompts; give one per prompt (None for none).")
    return descriptions


def _is_mix(value: object) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(item, dict) for item in value)
