"""The LoRA adapter value, its PEFT export and import, and the weight checks.

An adapter is a value: named by its content, never mutated after creation. Its
tensors are CPU float tensors keyed by PEFT's names
(`base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight`, [r, in];
`...lora_B.weight`, [out, r]), so the PEFT folder is the boundary to vLLM and PEFT.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import AdapterCheckError, CheckpointError
from .hypernet.config import LoraSettings

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
# Provenance (name, description, hypernetwork) beside the PEFT files; PEFT and vLLM
# ignore it. Kept out of the safetensors header, whose metadata order is not stable.
ORIGIN_FILE = "t2l_adapter.json"
DEFAULT_MAX_DELTA_NORM = 1000.0

_MLP_MODULES = {"gate_proj", "up_proj", "gate_up_proj", "down_proj"}
_KEY = re.compile(r"^base_model\.model\.model\.layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])\.weight$")


def parent_block(module: str) -> str:
    """The decoder-layer attribute that holds a projection: `self_attn` or `mlp`."""
    return "mlp" if module in _MLP_MODULES else "self_attn"


def peft_key(layer: int, module: str, matrix: str) -> str:
    """PEFT's state-dict key for one matrix ("A" or "B") of one module of one layer."""
    return f"base_model.model.model.layers.{layer}.{parent_block(module)}.{module}.lora_{matrix}.weight"


@dataclass(frozen=True)
class LoRAAdapter:
    """One generated (or loaded) LoRA adapter."""

    name: str
    lora: LoraSettings
    tensors: Mapping[str, torch.Tensor]
    base_model: str = ""
    description: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tensors", MappingProxyType(dict(self.tensors)))
        object.__setattr__(self, "metadata", MappingProxyType(dict(self.metadata)))

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    @property
    def num_parameters(self) -> int:
        return sum(t.numel() for t in self.tensors.values())

    def peft_config(self) -> dict:
        """The adapter_config.json that PEFT and vLLM read."""
        return {
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": self.base_model or None,
            "r": self.lora.rank,
            "lora_alpha": self.lora.alpha,
            "lora_dropout": self.lora.dropout,
            "use_rslora": self.lora.use_rslora,
            "target_modules": sorted(self.lora.target_modules),
            "bias": "none",
            "fan_in_fan_out": False,
            "inference_mode": True,
            "init_lora_weights": True,
            "modules_to_save": None,
        }

    def save_peft(self, folder: str | Path) -> Path:
        """Writes the PEFT folder; the same adapter always gives byte-identical files."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CONFIG_FILE).write_text(json.dumps(self.peft_config(), indent=2, sort_keys=True) + "\n")
        origin = {"name": self.name, "description": self.description, **self.metadata}
        (folder / ORIGIN_FILE).write_text(json.dumps(origin, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
        save_file({k: v.contiguous() for k, v in self.tensors.items()}, str(folder / WEIGHTS_FILE), {"format": "pt"})
        return folder

    @classmethod
    def load_peft(cls, folder: str | Path, name: str | None = None) -> "LoRAAdapter":
        """Reads a PEFT LoRA folder (attention and MLP projections of decoder layers)."""
        folder = Path(folder)
        try:
            config = json.loads((folder / CONFIG_FILE).read_text())
            tensors = load_file(str(folder / WEIGHTS_FILE))
        except (OSError, json.JSONDecodeError, SafetensorError) as err:
            raise CheckpointError(f"cannot read LoRA folder `{folder}`: {err}") from err
        target = config.get("target_modules") or []
        if isinstance(target, str):
            raise CheckpointError(f"LoRA folder `{folder}`: regex `target_modules` is not supported; list the names.")
        lora = LoraSettings(
            rank=int(config["r"]),
            alpha=float(config.get("lora_alpha", config["r"])),
            use_rslora=bool(config.get("use_rslora", False)),
            dropout=float(config.get("lora_dropout", 0.0)),
            target_modules=tuple(sorted(target)),
        )
        bad = [k for k in tensors if not _KEY.match(k)]
        if bad:
            raise CheckpointError(f"LoRA folder `{folder}` has keys this project does not handle, e.g. `{bad[0]}`.")
        return cls(
            name=name or folder.name,
            lora=lora,
            tensors={k: v.float() for k, v in tensors.items()},
            base_model=config.get("base_model_name_or_path") or "",
        )

    def matrices(self, module: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Stacked A (layers, r, in) and B (layers, out, r) of one module, by layer index."""
        layers = sorted({int(m.group(1)) for k in self.tensors if (m := _KEY.match(k)) and m.group(2) == module})
        A = torch.stack([self.tensors[peft_key(i, module, "A")] for i in layers])
        B = torch.stack([self.tensors[peft_key(i, module, "B")] for i in layers])
        return A, B


def delta_norms(A: torch.Tensor, B: torch.Tensor, scaling: float) -> torch.Tensor:
    """Frobenius norm of scaling * B @ A per matrix, without forming B @ A, in the inputs' dtype.

    A (..., r, in), B (..., out, r) -> (...). ||BA||^2 = sum((A A^T) * (B^T B)), r x r work.
    """
    gram_a = A @ A.transpose(-1, -2)  # (..., r, r)
    gram_b = B.transpose(-1, -2) @ B  # (..., r, r)
    return scaling * (gram_a * gram_b).sum(dim=(-1, -2)).clamp_min(0).sqrt()


# Relative rounding error of a float32 product or sum, with a margin of two over the textbook bound.
_F32_UNIT = 2.0 * 2.0**-24


def checked_delta_norms(A: torch.Tensor, B: torch.Tensor, scaling: float, bound: float) -> torch.Tensor:
    """`delta_norms` as float64, decided against `bound` exactly as a float64 computation decides it.

    A (..., r, in), B (..., out, r) of any float dtype -> (...) float64. The grams are taken in the
    inputs' own dtype (float32: no copy of the matrices, r x r work each), together with a bound on
    their rounding error: |computed - exact| of ||BA||^2 is at most gamma * ||A||^2 * ||B||^2, with
    gamma = (in + out + r^2 + 2) x unit roundoff (each gram entry is a dot product over `in` or
    `out` terms, their elementwise products are summed over r^2; |<Ga, Gb>| <= tr(Ga) tr(Gb) for
    the Gram matrices). The matrices whose squared norm lies within that error of bound^2, or
    whose float32 grams overflow to infinity, are recomputed in float64, so no verdict differs
    from one taken wholly in float64, and overflow is still caught. Finite inputs are assumed
    (`check_weights` tests that first).
    """
    if A.dtype == torch.float64:
        return delta_norms(A, B, scaling)
    gram_a = A @ A.transpose(-1, -2)  # (..., r, r)
    gram_b = B.transpose(-1, -2) @ B  # (..., r, r)
    squared = (gram_a * gram_b).sum(dim=(-1, -2)).double() * scaling**2  # (...)
    unit = _F32_UNIT if A.dtype == torch.float32 else 2.0 * torch.finfo(A.dtype).eps
    r, n_in, n_out = A.shape[-2], A.shape[-1], B.shape[-2]
    gamma = (n_in + n_out + r * r + 2) * unit
    error = gamma * scaling**2 * (gram_a.diagonal(dim1=-2, dim2=-1).sum(-1).double()
                                  * gram_b.diagonal(dim1=-2, dim2=-1).sum(-1).double())  # (...)
    undecided = ~torch.isfinite(squared) | ~torch.isfinite(error) | ((squared - bound**2).abs() <= error)
    norms = squared.clamp_min(0).sqrt()
    if bool(undecided.any()):
        norms[undecided] = delta_norms(A[undecided].double(), B[undecided].double(), scaling)
    return norms


def check_weights(A: torch.Tensor, B: torch.Tensor, scaling: float, max_delta_norm: float) -> str | None:
    """Why the matrices of one adapter (layers, ...) are refused, or None if they pass.

    Runs in the matrices' own dtype, with the few borderline or overflowing cases redone in
    float64 (`checked_delta_norms`): the verdicts of a float64 check, at the cost of a float32 one.
    """
    if not (torch.isfinite(A).all() and torch.isfinite(B).all()):
        return "its weights contain NaN or infinity"
    return norm_problem(checked_delta_norms(A, B, scaling, max_delta_norm), max_delta_norm)


def norm_problem(norms: torch.Tensor, max_delta_norm: float) -> str | None:
    """Why update norms (layers, ...) of one adapter's module are refused, or None if all are within the bound."""
    worst = float(norms.max())
    if not math.isfinite(worst) or worst > max_delta_norm:
        layer = int(norms.reshape(norms.shape[0], -1).amax(-1).argmax()) if norms.dim() else 0
        return (
            f"the norm of its weight update reaches {worst:.4g} (layer {layer}), above the bound "
            f"{max_delta_norm:g} (`max_delta_norm`)"
        )
    return None


def check_adapter(adapter: LoRAAdapter, max_delta_norm: float = DEFAULT_MAX_DELTA_NORM) -> None:
    """Raises `AdapterCheckError` if any weight is non-finite or an update's norm is too large."""
    for module in adapter.lora.target_modules:
        A, B = adapter.matrices(module)
        problem = check_weights(A, B, adapter.lora.scaling, max_delta_norm)
        if problem:
            raise AdapterCheckError(f"adapter `{adapter.name}` refused: {module}: {problem}.")
