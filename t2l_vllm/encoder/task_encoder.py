"""The task encoder: descriptions to the vectors a hypernetwork reads, over sentence-transformers.

Any sentence-transformers model works by name or folder; for the reference's
checkpoints (gte-large-en-v1.5) the settings reproduce its text and embedding
normalisation: a full stop appended, CLS pooling, L2 normalisation times
sqrt(dim). Every encoder passes `self_check.check_encoder` when it is built.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from dataclasses import replace

import torch

from ..errors import ConfigError
from ..hypernet.config import DEFAULT_ENCODER, EncoderSettings
from .identity import weights_sha256
from .loading import load_sentence_transformer
from .self_check import ProbeResult, check_encoder

GTE_LARGE = "Alibaba-NLP/gte-large-en-v1.5"  # the reference's task encoder


# Settings that reproduce how a known encoder was used in training (the reference's
# checkpoints use gte-large-en-v1.5 with CLS pooling and sqrt(dim) scaling), by model name.
ENCODER_PRESETS: dict[str, EncoderSettings] = {
    preset.model: preset
    for preset in (EncoderSettings(), EncoderSettings(model=GTE_LARGE, dim=1024, pooling="cls", trust_remote_code=True))
}


def encoder_settings_for(name: str, source: str | None = None, trust_remote_code: bool = False) -> EncoderSettings:
    """The preset for a known encoder, else settings with the dimension read from the model.

    `source`: a local folder holding the encoder named `name`; its weights' hash is
    recorded (`weights_sha256`), so that later loads from any folder are checked
    to be these weights. `trust_remote_code` applies to an encoder without a preset.
    """
    if name == "all-MiniLM-L6-v2":
        name = DEFAULT_ENCODER
    identity = {} if source is None else {"weights_sha256": weights_sha256(source)}
    settings = ENCODER_PRESETS.get(name)
    if settings is not None:
        return replace(settings, **identity)
    probe = EncoderSettings(model=name, trust_remote_code=trust_remote_code, **identity)
    model = load_sentence_transformer(probe, torch.device("cpu"), source)
    return replace(probe, dim=model.get_embedding_dimension())


def add_full_stop(text: str) -> str:
    """The reference's description formatting: stripped, with '.' after a final letter."""
    text = text.strip()
    return text + "." if text and text[-1].isalpha() else text


class TaskEncoder:
    """Encodes descriptions with a sentence-transformers model, thread-safe.

    `tuned_weights` replace the model's top `settings.tuned_layers` layers (from
    `train/encoder_tuning.py`, kept in the hypernetwork's checkpoint). `source`: a
    local folder to load `settings.model` from (see `loading.py`). Raises
    `ConfigError` when the model cannot be loaded, its weights are not the ones
    the settings record, its dimension differs from what the hypernetwork
    expects, the tuned weights do not fit the settings, or it fails its
    self-check (`self_check.py`): a broken encoder is refused before it serves.
    """

    def __init__(
        self,
        settings: EncoderSettings,
        device: str | torch.device = "cpu",
        tuned_weights: Mapping[str, torch.Tensor] | None = None,
        source: str | None = None,
    ) -> None:
        self.settings = settings
        self.device = torch.device(device)
        self._model = load_sentence_transformer(settings, self.device, source)
        dim = self._model.get_embedding_dimension()
        if dim != settings.dim:
            raise ConfigError(
                f"encoder `{settings.model}` gives {dim}-d embeddings, the hypernetwork expects {settings.dim}."
            )
        self.tuned_weights = write_tuned_weights(self._model, settings, tuned_weights)
        # sentence-transformers models are not safe to call from two threads at once.
        self._lock = threading.Lock()
        self.self_check: ProbeResult = check_encoder(settings.model, self._model, self.encode)

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


def load_task_encoder(folder, config, device: str | torch.device = "cpu", source: str | None = None) -> TaskEncoder:
    """The task encoder a hypernetwork checkpoint's `config` reads: its model with the tuned layers the
    checkpoint `folder` keeps. `source`: a local folder holding that model, loaded in place of its name."""
    from ..hypernet.checkpoint import load_encoder_weights

    return TaskEncoder(config.encoder, device=device, tuned_weights=load_encoder_weights(folder, config), source=source)
