"""The one check of a deployment's settings, before vLLM's engine starts: every launch runs it.

`t2l-vllm serve`, a plain `vllm serve` with `$T2L_VLLM_CONFIG` (from the general
plugin, as vLLM builds its engine arguments) and the offline engine all call
`check_deployment`, so a bad flag or file is refused in seconds, with the same
message, instead of after the engine's start (minutes on a large model).
"""

from __future__ import annotations

from ..descriptions import normalize_description
from ..errors import ConfigError, InvalidDescriptionError
from ..hypernet.checkpoint import load_checkpoint
from ..hypernet.config import HypernetConfig
from ..hypernet.shapes import check_shapes_fit, load_base_shapes
from ..router import TaskLibrary
from .settings import ServiceSettings


def check_deployment(
    settings: ServiceSettings, model: str, enable_lora: bool = True, max_lora_rank: int | None = None
) -> HypernetConfig:
    """Raises `ConfigError` (or `CheckpointError`, `ShapeMismatchError`) for what would break the deployment:
    the hypernetwork's weights against their fingerprint and against the served model's shapes, vLLM's LoRA
    options (`enable_lora`, `max_lora_rank`: None when the launch sets the rank itself), the router library,
    and every preloaded description. Returns the hypernetwork's config."""
    hypernet, _ = load_checkpoint(settings.hypernet)  # raises on altered, corrupt or mismatched weights
    config = hypernet.config
    del hypernet
    rank = config.lora.rank
    if not enable_lora:
        raise ConfigError(f"a hypernetwork serves adapters, but vLLM's LoRA is off: start it with `--enable-lora --max-lora-rank {rank}`.")
    if max_lora_rank is not None and max_lora_rank < rank:
        raise ConfigError(f"the hypernetwork writes rank-{rank} adapters: raise `--max-lora-rank` to at least {rank}, got {max_lora_rank}.")
    check_shapes_fit(config.base, load_base_shapes(model), list(config.lora.target_modules))
    if settings.router is not None:
        TaskLibrary.load(settings.router.library)
    for line, description in enumerate(settings.preload, 1):
        try:
            normalize_description(description, settings.generator.max_description_chars)
        except InvalidDescriptionError as err:
            raise ConfigError(f"`--preload`, description {line}: {err}") from None
    return config
