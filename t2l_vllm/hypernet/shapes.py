"""Base-model shapes read from `config.json`, never from the weights.

A hypernetwork only needs, for every target module, its input and output features
and the number of decoder layers. These come from the base model's config, which is
a few kilobytes even for a 70B model, so `init-hypernet`, `info` and serving never
load base weights just to learn shapes (the reference code loads the whole LLM).
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
_HIDDEN = "hidden"
_INTERMEDIATE = "intermediate"
MODULE_FEATURES: dict[str, tuple[str, str]] = {
    "q_proj": (_HIDDEN, _ATTENTION),
    "k_proj": (_HIDDEN, _KV),
    "v_proj": (_HIDDEN, _KV),
    "o_proj": (_ATTENTION, _HIDDEN),
    "gate_proj": (_HIDDEN, _INTERMEDIATE),
    "up_proj": (_HIDDEN, _INTERMEDIATE),
    "down_proj": (_INTERMEDIATE, _HIDDEN),
}



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

    def module_shape(self, module: str) -> ModuleShape:
        if module not in MODULE_FEATURES:
            raise ConfigError(
                f"target module `{module}` is not supported; choose from {sorted(MODULE_FEATURES)}."
            )
        sizes = {
            _HIDDEN: self.hidden_size,
            _ATTENTION: self.num_attention_heads * self.head_dim,
            _KV: self.num_key_value_heads * self.head_dim,
            _INTERMEDIATE: self.intermediate_size,
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
        """Reads shapes from a parsed `config.json` (multimodal wrappers use `text_config`)."""
        if "text_config" in config and "num_hidden_layers" not in config:
            config = config["text_config"]
        model_type = config.get("model_type", "")
        missing = [k for k in ("num_hidden_layers", "hidden_size", "num_attention_heads") if k not in config]
        if missing:
            raise ConfigError(f"config.json of `{name or 'base model'}` lacks {', '.join(missing)}.")
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
            intermediate_size=int(config.get("intermediate_size", 4 * hidden)),
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
        want, got = expected.module_shape(module), actual.module_shape(module)
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
