"""This project's hypernetwork checkpoint: `config.json` + `model.safetensors` (+ `encoder.safetensors`).

The config names everything needed to rebuild the module (variant, sizes, base
shapes, encoder, LoRA settings). The fingerprint is a sha256 over the config and
the weights; it names the hypernetwork inside adapter keys (so a retrained
hypernetwork never reuses an old adapter) and detects a corrupt weights file.
A hypernetwork that reads a tuned encoder (`EncoderSettings.tuned_layers`)
keeps the tuned layers in `encoder.safetensors`, and the fingerprint covers
them: the same description embedded by another encoder is another input.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError, ConfigError
from .config import HypernetConfig
from .model import TextToLoRA, build_hypernet

FORMAT = "t2l_vllm.hypernet/1"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
ENCODER_WEIGHTS_FILE = "encoder.safetensors"

EncoderWeights = Mapping[str, torch.Tensor]


def fingerprint(model: TextToLoRA, encoder_weights: EncoderWeights | None = None) -> str:
    """sha256 of the config, every tensor of the state dict and every tuned encoder tensor, in key order."""
    h = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True).encode())
    tensors = [*sorted(model.state_dict().items()), *sorted((f"encoder/{k}", v) for k, v in (encoder_weights or {}).items())]
    for key, tensor in tensors:
        h.update(key.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def save_checkpoint(model: TextToLoRA, folder: str | Path, encoder_weights: EncoderWeights | None = None) -> str:
    """Writes the checkpoint folder and returns the fingerprint. `encoder_weights`: the tuned encoder
    layers the hypernetwork reads through (`TaskEncoder.tuned_weights`), required when its config has them."""
    folder = Path(folder)
    tuned = model.config.encoder.tuned_layers
    if bool(tuned) != bool(encoder_weights):
        given = "tuned encoder weights were given" if encoder_weights else "no tuned encoder weights were given"
        raise CheckpointError(f"the hypernetwork reads an encoder with {tuned} tuned layers, but {given} to save.")
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE), {"format": FORMAT})
    if encoder_weights:
        encoder_state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in encoder_weights.items()}
        save_file(encoder_state, str(folder / ENCODER_WEIGHTS_FILE), {"format": FORMAT})
    else:
        (folder / ENCODER_WEIGHTS_FILE).unlink(missing_ok=True)  # a folder written over keeps no stale encoder
    digest = fingerprint(model, encoder_weights)
    doc = {"format": FORMAT, "fingerprint": digest, **model.config.to_dict()}
    (folder / CONFIG_FILE).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return digest


def load_config(folder: str | Path) -> tuple[HypernetConfig, str]:
    """The config and recorded fingerprint of a checkpoint folder, without its weights."""
    folder = Path(folder)
    config_path = folder / CONFIG_FILE
    if not folder.is_dir():
        raise CheckpointError(f"hypernetwork checkpoint `{folder}` does not exist or is not a folder.")
    if not config_path.is_file():
        raise CheckpointError(f"hypernetwork checkpoint `{folder}` has no {CONFIG_FILE}.")
    try:
        doc = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"`{config_path}` is not valid JSON: {err}") from err
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CheckpointError(f"`{config_path}` is not a t2l_vllm hypernetwork (format must be {FORMAT!r}).")
    doc.pop("format")
    digest = doc.pop("fingerprint", "")
    try:
        return HypernetConfig.from_dict(doc), digest
    except ConfigError as err:
        raise CheckpointError(f"`{config_path}`: {err}") from err


def load_checkpoint(folder: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> tuple[TextToLoRA, str]:
    """Loads a checkpoint; raises `CheckpointError` if a file is missing, corrupt or altered."""
    folder = Path(folder)
    config, recorded = load_config(folder)
    weights_path = folder / WEIGHTS_FILE
    if not weights_path.is_file():
        raise CheckpointError(f"hypernetwork checkpoint `{folder}` has no {WEIGHTS_FILE}.")
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"`{weights_path}` is corrupt: {err}") from err
    model = build_hypernet(config)
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"`{weights_path}` does not match its config: missing {missing[:3]}, unexpected {unexpected[:3]}."
        )
    wrong = [k for k, v in state.items() if v.shape != expected[k].shape]
    if wrong:
        k = wrong[0]
        raise CheckpointError(
            f"`{weights_path}`: `{k}` has shape {tuple(state[k].shape)}, the config implies {tuple(expected[k].shape)}."
        )
    model.load_state_dict(state)
    digest = fingerprint(model, load_encoder_weights(folder, config))
    if recorded and recorded != digest:
        raise CheckpointError(
            f"`{weights_path}` does not match the fingerprint in {CONFIG_FILE}: the file was altered or is corrupt."
        )
    return model.to(device=device, dtype=dtype).eval(), digest


def load_encoder_weights(folder: str | Path, config: HypernetConfig) -> dict[str, torch.Tensor] | None:
    """The tuned encoder layers a checkpoint keeps (None when its config tunes none)."""
    if not config.encoder.tuned_layers:
        return None
    path = Path(folder) / ENCODER_WEIGHTS_FILE
    if not path.is_file():
        raise CheckpointError(
            f"hypernetwork checkpoint `{folder}` reads an encoder with {config.encoder.tuned_layers} tuned layers "
            f"but has no {ENCODER_WEIGHTS_FILE}."
        )
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"`{path}` is corrupt: {err}") from err
