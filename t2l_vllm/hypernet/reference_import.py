"""Imports a released reference Text-to-LoRA checkpoint (SakanaAI/text-to-lora).

A reference run folder holds `hypermod.pt` (the state dict of its `HyperModulator`),
`args.yaml` (its training arguments) and `adapter_config.json` (the PEFT LoRA it
emits). This module maps the reference's settings onto a `HypernetConfig` and its
tensor names onto `TextToLoRA`'s, checking every tensor key by key, so that a
converted checkpoint gives the reference's adapters without the reference code,
its base LLM or unpickling arbitrary objects (`hypermod.pt` is read weights-only).

Adapters are served at the scaling the reference's published results were
measured at, alpha/r (`LoraSettings.calibration`), although its
`adapter_config.json` says `use_rslora: true`; `rslora_as_written` keeps the flag.
The encoder's weights hash, when the caller has it (`t2l-vllm import-reference`
hashes a local or cached copy), is recorded, so that it may later load from any folder.

Base-model shapes come from the checkpoint itself (the reference keeps a per-layer
A/B offset for every target module, shaped like the LoRA it emits), so a base model
is only needed to record its exact head layout.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from ..errors import CheckpointError, ConfigError
from .checkpoint import save_checkpoint
from .config import EncoderSettings, HypernetConfig, LoraSettings, OutputTransform
from .model import TextToLoRA, build_hypernet
from .shapes import MODULE_FEATURES, BaseModelShapes, ModuleShape, check_shapes_fit, load_base_shapes

Tensor = torch.Tensor

WEIGHTS_NAME = "hypermod.pt"
ARGS_NAME = "args.yaml"
ADAPTER_NAME = "adapter_config.json"

# Values of the reference's `configs.py` for arguments an older args.yaml may lack.
_ARG_DEFAULTS: dict[str, Any] = {
    "training_task": "sft",
    "shared_AB_head": False,
    "autoreg_gen": False,
    "learnable_pos_emb": False,
    "encoder_type": "linear",
    "use_one_hot_task_emb": False,
    "pred_z_score": True,
    "factorized": False,
    "delta_w_scaling": 10000,
    "emb_model": "",
    "model_dir": "",
}

# Our key prefix -> the reference's, for tensors laid out the same on both sides.
_RENAMES = (
    ("task_proj.", "task_encoder.mlp."),
    ("layer_emb.", "layer_depth_encoder."),
    ("module_emb.", "layer_type_encoder."),
    ("mixer.", "mixer."),
    ("block1.", "mlp1."),
    ("block2.", "mlp2."),
    ("to_head.", "mlp3."),
    ("heads.", "heads."),
    ("matrix_emb_norm.", "out_emb_norm."),
    ("rank_emb.", "pos_emb."),
)
# Our buffer name -> the reference's per-module A/B parameter dict.
_STATISTICS = {"offset": "AB_offset", "mean": "mean_recon_target", "std": "std_recon_target"}
# Persisted only by some transformers releases; the reference always used base 10000.
_ROTARY_KEY = "rotary_emb.inv_freq"


@dataclass(frozen=True)
class _Slot:
    """Where one reference tensor goes: our key (None: checked, then not needed), a row of it, its shape."""

    key: str | None
    row: int | None
    shape: tuple[int, ...]


def import_reference_checkpoint(
    path: str | os.PathLike[str],
    base_model: str | None = None,
    rslora_as_written: bool = False,
    encoder_sha256: str = "",
) -> TextToLoRA:
    """Loads a reference checkpoint (run folder or `hypermod.pt`) as an eval-mode `TextToLoRA`.

    `base_model` (folder, config.json or hub id) is optional: when given, its shapes
    must fit the checkpoint (else `ShapeMismatchError`; `ConfigError` if its config
    cannot be read) and are recorded with its name. `rslora_as_written`: serve the
    adapters with the reference's `use_rslora` flag as written instead of at the
    published calibration. `encoder_sha256`: the hash of the encoder's weights to
    record as its identity (`encoder/identity.py`; empty: named only).
    Raises `CheckpointError` naming the file for a missing, corrupt or inconsistent
    checkpoint, or a reference setting this project has no counterpart for.
    """
    weights_path, folder = _locate(Path(path))
    args_path, adapter_path = folder / ARGS_NAME, folder / ADAPTER_NAME
    for needed in (args_path, adapter_path):
        if not needed.is_file():
            raise CheckpointError(f"reference checkpoint `{folder}` has no {needed.name} (needed for `{weights_path}`).")
    args = {**_ARG_DEFAULTS, **_read_args(args_path)}
    lora = _read_lora_settings(adapter_path, rslora_as_written)
    variant, position_encoding = _variant(args, args_path)
    encoder_model = _encoder_model(args, args_path)
    state = _read_state(weights_path)

    layers = _size(state, "layer_depth_encoder.0.weight", 0, weights_path)
    features = {m: _module_shape(state, m, weights_path) for m in lora.target_modules}
    base = _derived_base(str(args["model_dir"]), layers, features, weights_path)
    if base_model is not None:
        actual = load_base_shapes(base_model)
        check_shapes_fit(base, actual, list(lora.target_modules))
        base = actual
    try:
        config = HypernetConfig(
            base=base,
            variant=variant,
            latent_size=_size(state, "mixer.1.weight", 1, weights_path),
            head_in_size=_size(state, "mlp3.4.weight", 0, weights_path),
            lora=lora,
            encoder=EncoderSettings(
                model=encoder_model,
                dim=_size(state, "task_encoder.mlp.0.weight", 1, weights_path),
                pooling="cls",
                add_full_stop=True,
                scale="sqrt_dim",
                trust_remote_code=True,
                weights_sha256=encoder_sha256,
            ),
            position_encoding=position_encoding,
            output=_output_transform(args, state, lora.target_modules, args_path),
        )
    except ConfigError as err:
        raise CheckpointError(f"`{weights_path}` with its {ARGS_NAME}: {err}") from err

    model = build_hypernet(config)
    model.load_state_dict(_translate(state, _slots(model), model, weights_path))
    return model.eval()


def convert_reference_checkpoint(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    base_model: str | None = None,
    rslora_as_written: bool = False,
    encoder_sha256: str = "",
) -> str:
    """Imports a reference checkpoint and saves it in this project's format; returns its fingerprint."""
    return save_checkpoint(import_reference_checkpoint(src, base_model, rslora_as_written, encoder_sha256), dst)


def read_encoder_name(path: str | os.PathLike[str]) -> str:
    """The task encoder a reference checkpoint (run folder or `hypermod.pt`) was trained with, by hub name."""
    weights_path, folder = _locate(Path(path))
    args_path = folder / ARGS_NAME
    if not args_path.is_file():
        raise CheckpointError(f"reference checkpoint `{folder}` has no {ARGS_NAME} (needed for `{weights_path}`).")
    return _encoder_model({**_ARG_DEFAULTS, **_read_args(args_path)}, args_path)


# --- files ------------------------------------------------------------------
def _locate(path: Path) -> tuple[Path, Path]:
    """(hypermod.pt, run folder); a run's `checkpoints/it_N/hypermod.pt` takes args from the run folder."""
    if path.is_dir():
        weights = path / WEIGHTS_NAME
        if not weights.is_file():
            raise CheckpointError(f"reference checkpoint `{path}` has no {WEIGHTS_NAME}.")
    elif path.is_file():
        weights = path
    else:
        raise CheckpointError(f"reference checkpoint `{path}` does not exist.")
    folder = weights.parent
    if not (folder / ARGS_NAME).is_file():
        # Like the reference, which cuts the path at "checkpoint" to find the run folder.
        for ancestor in (folder, *folder.parents):
            if ancestor.name.startswith("checkpoint"):
                folder = ancestor.parent
                break
    return weights, folder


def _read_args(path: Path) -> dict[str, Any]:
    try:
        args = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise CheckpointError(f"`{path}` is not readable YAML: {err}") from err
    if not isinstance(args, dict):
        raise CheckpointError(f"`{path}` is not a mapping of training arguments.")
    return args


def _read_lora_settings(path: Path, rslora_as_written: bool) -> LoraSettings:
    """The LoRA the reference emits, with PEFT's defaults for optional fields, at the published calibration
    (alpha/r) unless `rslora_as_written`."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"`{path}` is not readable JSON: {err}") from err
    if not isinstance(doc, dict):
        raise CheckpointError(f"`{path}` is not a PEFT adapter config.")
    peft_type = str(doc.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise CheckpointError(f"`{path}`: peft_type={peft_type!r} is not supported; only LoRA output is.")
    missing = [k for k in ("r", "lora_alpha", "target_modules") if k not in doc]
    if missing:
        raise CheckpointError(f"`{path}` lacks {', '.join(missing)}.")
    modules = doc["target_modules"]
    if not isinstance(modules, list) or not all(isinstance(m, str) for m in modules):
        raise CheckpointError(f"`{path}`: target_modules must be a list of module names, got {modules!r}.")
    written = bool(doc.get("use_rslora", False))
    try:
        return LoraSettings(
            rank=int(doc["r"]),
            alpha=float(doc["lora_alpha"]),
            use_rslora=written and rslora_as_written,
            calibration="as_written" if written and rslora_as_written else "published",
            dropout=float(doc.get("lora_dropout", 0.0)),
            # Kept as stored: the reference numbers module types in this order.
            target_modules=tuple(modules),
        )
    except (ConfigError, TypeError, ValueError) as err:
        raise CheckpointError(f"`{path}`: {err}") from err


def _read_state(path: Path) -> dict[str, Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch.load raises many kinds for a bad file
        raise CheckpointError(f"`{path}` cannot be read as a weights-only torch state dict: {err}") from err
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()
    ):
        raise CheckpointError(f"`{path}` is not a state dict of named tensors.")
    return state


# --- settings ---------------------------------------------------------------
def _unsupported(path: Path, setting: str, value: Any, why: str) -> CheckpointError:
    return CheckpointError(f"`{path}`: {setting}={value!r} is not supported: {why}.")


def _variant(args: dict[str, Any], path: Path) -> tuple[str, str]:
    """(variant, position encoding) for the reference's head settings."""
    if args["encoder_type"] != "linear":
        raise _unsupported(path, "encoder_type", args["encoder_type"], "only the linear task encoder has a counterpart")
    if args["use_one_hot_task_emb"]:
        raise _unsupported(path, "use_one_hot_task_emb", True, "tasks must be described in text")
    shared, autoreg = bool(args["shared_AB_head"]), bool(args["autoreg_gen"])
    if autoreg and not shared:
        raise _unsupported(path, "autoreg_gen", True, "without shared_AB_head it has no counterpart (S needs both)")
    if not shared:
        return "L", "rotary"
    if not autoreg:
        return "M", "rotary"
    return "S", "learned" if args["learnable_pos_emb"] else "rotary"


def _encoder_model(args: dict[str, Any], path: Path) -> str:
    """The description encoder; only gte models, embedded as the reference does, are reproduced."""
    name = str(args["emb_model"] or "")
    if not name:
        raise _unsupported(path, "emb_model", name, "the reference then embeds descriptions with the base LLM itself")
    if "SFR" in name or "gte" not in name:
        raise _unsupported(path, "emb_model", name, "only gte encoders (CLS pooling) are reproduced")
    return name


def _output_transform(
    args: dict[str, Any], state: dict[str, Tensor], modules: tuple[str, ...], path: Path
) -> OutputTransform:
    """Mirrors how the reference turns head outputs into the A and B it saves.

    SFT adds the per-layer offset. Reconstruction-trained checkpoints go through
    the reference's raw-scale conversion: factorized ones undo the z-score and add
    the offset; the others divide A and B by sqrt(delta_w_scaling) and add nothing.
    """
    task = args["training_task"]
    offset = any(bool(state[f"AB_offset.{x}.{m}"].any()) for m in modules for x in "AB")
    if task == "sft":
        return OutputTransform(offset=offset)
    if task != "recon":
        raise _unsupported(path, "training_task", task, "only sft and recon checkpoints exist in the reference")
    if args["factorized"]:
        return OutputTransform(zscore=bool(args["pred_z_score"]), offset=offset)
    if args["pred_z_score"]:
        raise _unsupported(path, "pred_z_score", True, "the reference itself cannot undo z-scores without factorized")
    return OutputTransform(scale=1.0 / math.sqrt(float(args["delta_w_scaling"])))


# --- shapes -----------------------------------------------------------------
def _tensor(state: dict[str, Tensor], key: str, ndim: int, path: Path) -> Tensor:
    if key not in state:
        raise CheckpointError(f"`{path}` lacks `{key}`, which every reference checkpoint has.")
    tensor = state[key]
    if tensor.ndim != ndim:
        raise CheckpointError(f"`{path}`: `{key}` has shape {tuple(tensor.shape)}, expected {ndim} dimensions.")
    return tensor


def _size(state: dict[str, Tensor], key: str, dim: int, path: Path) -> int:
    """One size of the hypernetwork, read off a 2-D tensor."""
    return int(_tensor(state, key, 2, path).shape[dim])


def _module_shape(state: dict[str, Tensor], module: str, path: Path) -> ModuleShape:
    """in/out of a target module, from its offsets: A is [layers, r, in], B is [layers, out, r]."""
    a = _tensor(state, f"AB_offset.A.{module}", 3, path)
    b = _tensor(state, f"AB_offset.B.{module}", 3, path)
    return ModuleShape(in_features=int(a.shape[2]), out_features=int(b.shape[1]))


def _derived_base(name: str, layers: int, features: dict[str, ModuleShape], path: Path) -> BaseModelShapes:
    """Base shapes that give every target module the in/out found in the checkpoint.

    Only hidden size, heads*head_dim, kv_heads*head_dim and the intermediate size
    shape a module, so head_dim is taken as gcd(heads*head_dim, kv_heads*head_dim),
    which fits any grouped-query layout; sizes no target module uses are filled in
    (kv and attention from each other, intermediate as 4*hidden). `model_type` is
    left empty: only the base model's config.json knows it.
    """
    sizes: dict[str, int] = {}
    for module, shape in features.items():
        for role, value in zip(MODULE_FEATURES[module], (shape.in_features, shape.out_features)):
            if sizes.setdefault(role, value) != value:
                raise CheckpointError(
                    f"`{path}`: {module} is [{shape.in_features} -> {shape.out_features}], but another target "
                    f"module implies a {role} size of {sizes[role]}."
                )
    hidden = sizes["hidden"]  # every supported module reads or writes the hidden state
    attention = sizes.get("attention", sizes.get("kv", hidden))
    kv = sizes.get("kv", attention)
    head_dim = math.gcd(attention, kv)
    return BaseModelShapes(
        model_type="",
        num_layers=layers,
        hidden_size=hidden,
        num_attention_heads=attention // head_dim,
        num_key_value_heads=kv // head_dim,
        head_dim=head_dim,
        intermediate_size=sizes.get("intermediate", 4 * hidden),
        name=name,
    )


# --- tensors ----------------------------------------------------------------
def _slots(model: TextToLoRA) -> dict[str, _Slot]:
    """Every reference key that `model`'s config implies, and where its tensor goes."""
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    layers, rank = model.config.base.num_layers, model.rank
    slots: dict[str, _Slot] = {}
    for module, shape in model.shapes.items():
        for stat, ref in _STATISTICS.items():
            for matrix, dims in (("A", (rank, shape.in_features)), ("B", (shape.out_features, rank))):
                key = f"{stat}_{matrix}_{module}"
                slots[f"{ref}.{matrix}.{module}"] = _Slot(key if key in ours else None, None, (layers, *dims))
    for key, shape in ours.items():
        if key.startswith("matrix_emb."):  # the reference keeps the A and B rows apart
            module = key.removeprefix("matrix_emb.")
            for row, matrix in enumerate("AB"):
                slots[f"out_emb.{module}.{matrix}"] = _Slot(key, row, shape[1:])
            continue
        for mine, ref in _RENAMES:
            if key.startswith(mine):
                slots[ref + key.removeprefix(mine)] = _Slot(key, None, shape)
                break
    return slots


def _is_head_bias(key: str) -> bool:
    """Reference heads have no bias when trained with z-scores or a multi-task LoRA offset."""
    return key.startswith("heads.") and key.endswith(".bias")


def _translate(state: dict[str, Tensor], slots: dict[str, _Slot], model: TextToLoRA, path: Path) -> dict[str, Tensor]:
    """The reference state dict under our keys, after checking names and shapes key by key."""
    rotary = model.variant == "S" and model.config.position_encoding == "rotary"
    unexpected = [k for k in state if k not in slots and not (rotary and k == _ROTARY_KEY)]
    missing = [k for k in slots if k not in state and not _is_head_bias(k)]
    if unexpected or missing:
        raise CheckpointError(
            f"`{path}` does not match its {ARGS_NAME} and {ADAPTER_NAME}: "
            f"unexpected keys {unexpected[:5]}, missing keys {missing[:5]}."
        )
    for key, slot in slots.items():
        if key in state and tuple(state[key].shape) != slot.shape:
            raise CheckpointError(
                f"`{path}`: `{key}` has shape {tuple(state[key].shape)}, "
                f"the checkpoint's settings and sizes imply {slot.shape}."
            )
    if _ROTARY_KEY in state:
        _check_rotary(state[_ROTARY_KEY], model.config.latent_size, path)

    out: dict[str, Tensor] = {}
    for key, slot in slots.items():
        if slot.key is None:
            continue
        if key not in state:  # a head without bias
            out[slot.key] = torch.zeros(slot.shape)
        elif slot.row is None:
            out[slot.key] = state[key].float()
        else:
            out.setdefault(slot.key, torch.empty(2, *slot.shape))[slot.row] = state[key].float()
    return out


def _check_rotary(inv_freq: Tensor, dim: int, path: Path) -> None:
    """Our rotary embedding is fixed at base 10000, as the reference built it."""
    expected = 1.0 / (10000.0 ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    if inv_freq.shape != expected.shape or not torch.allclose(inv_freq.float(), expected):
        raise CheckpointError(f"`{path}`: `{_ROTARY_KEY}` is not the base-10000 rotary embedding of size {dim}.")
