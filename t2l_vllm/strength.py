"""How strong a hypernetwork's adapters are against its base model's own weights: the scaling bug detector.

An adapter served at the wrong scaling still loads, answers and looks fine: the
reference's checkpoints served with their `use_rslora` flag honoured are sqrt(r)
times stronger than the ones their results were measured with, and lose a third
of GSM8K. What gives it away is the size of the update against the weight it
updates, ||scaling * B @ A|| / ||W|| per target module and layer: trained LoRAs
on 7-8B models sit at 0.01-0.05, the overdriven reference adapters at 0.32-0.93
(figures from a public port of the reference, nelsonjoneto/text-to-lora).

A hypernetwork trained here records the strength of its adapters as it was
trained (`strength.json` in its checkpoint, written by SFT); served adapters far
from that record are flagged whatever the base. Without a record, the bound of
what trained LoRAs show on real LLMs applies. The base weights are read only for
the target modules, from a local folder or the Hugging Face cache; without them
the check says so and measures nothing.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import median
from typing import TYPE_CHECKING

import torch

from .adapters import delta_norms, parent_block
from .errors import ConfigError

if TYPE_CHECKING:
    from .generator import AdapterGenerator

STRENGTH_FILE = "strength.json"
# ||dW|| / ||W|| of trained LoRAs on 7-8B models, and of the reference's adapters overdriven by sqrt(r).
TRAINED_LLM_LORAS = (0.01, 0.05)
OVERDRIVEN_LLM_LORAS = (0.32, 0.93)
# Without a record: above this, far outside what trained LoRAs show (between the two ranges above).
MAX_UNRECORDED_STRENGTH = 0.2
# With a record: a served strength this many times above (or below) the trained one is a scaling mismatch.
MAX_DRIFT = 2.0
# Descriptions the probe adapters are generated from: tasks of several kinds.
PROBE_DESCRIPTIONS = (
    "Answer multiple-choice science questions.",
    "Solve the math word problem step by step.",
    "Translate the sentence into French.",
    "Reverse the letters of every word.",
)


def base_weight_key(layer: int, module: str) -> str:
    """The base model's state-dict key for one projection's weight (`model.layers.0.self_attn.q_proj.weight`)."""
    return f"model.layers.{layer}.{parent_block(module)}.{module}.weight"


def weight_norms(weight: Callable[[str], torch.Tensor], layers: int, modules: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """{module: (layers,) Frobenius norms of the base weights}, each read through `weight(key)`."""
    return {m: torch.tensor([float(weight(base_weight_key(i, m)).float().norm()) for i in range(layers)]) for m in modules}


def base_weight_norms(model: str, layers: int, modules: tuple[str, ...]) -> dict[str, torch.Tensor] | None:
    """The norms of a base model's target weights read from its safetensors files (a local folder or the
    Hugging Face cache), or None when its weights are not at hand."""
    from safetensors import safe_open

    from .encoder.identity import cached_snapshot

    folder = Path(model) if Path(model).is_dir() else (Path(model).parent if Path(model).is_file() else cached_snapshot(model))
    files = sorted(folder.glob("*.safetensors")) if folder is not None else []
    if not files:
        return None
    where: dict[str, Path] = {}
    for path in files:
        with safe_open(str(path), "pt") as f:
            where.update({key: path for key in f.keys()})

    def weight(key: str) -> torch.Tensor:
        if key not in where:
            raise ConfigError(f"the base model's weights in `{folder}` have no `{key}`.")
        with safe_open(str(where[key]), "pt") as f:
            return f.get_tensor(key)

    return weight_norms(weight, layers, modules)


def strengths(A: torch.Tensor, B: torch.Tensor, scaling: float, norms: torch.Tensor) -> torch.Tensor:
    """||scaling * B @ A|| / ||W|| of each adapter and layer: A (N, L, r, in), B (N, L, out, r) -> (N, L)."""
    return delta_norms(A.double(), B.double(), scaling).float() / norms


@dataclass(frozen=True)
class ModuleStrength:
    module: str
    median: float  # over probe adapters and layers
    max: float


@dataclass(frozen=True)
class StrengthRecord:
    """The median strength of a hypernetwork's adapters when it was trained, on the base it was trained with."""

    median: float
    scaling: float
    base_model: str
    by: str  # the trainer that measured it


def measure(weights: Mapping[str, tuple[torch.Tensor, torch.Tensor]], scaling: float, norms: Mapping[str, torch.Tensor]) -> list[ModuleStrength]:
    """Per-module strength of generated weights {module: (A (N, L, r, in), B (N, L, out, r))}."""
    out = []
    for module, (A, B) in weights.items():
        ratios = strengths(A, B, scaling, norms[module].to(A.device))
        out.append(ModuleStrength(module, float(ratios.median()), float(ratios.max())))
    return out


def overall(modules: list[ModuleStrength]) -> float:
    return median(m.median for m in modules)


def problem(modules: list[ModuleStrength], record: StrengthRecord | None) -> str | None:
    """Why these strengths look like a scaling bug, or None."""
    served = overall(modules)
    if record is not None and record.median > 0:
        drift = served / record.median
        if not 1 / MAX_DRIFT <= drift <= MAX_DRIFT:
            return (f"adapters are served at {drift:.2f}x the strength they had in training (median {served:.3g} against "
                    f"{record.median:.3g}, measured by {record.by} at scaling {record.scaling:.4g}): the served scaling is not the trained one")
        return None
    if served > MAX_UNRECORDED_STRENGTH:
        low, high = TRAINED_LLM_LORAS
        return (f"adapters' updates measure {served:.3g} of the updated weights' norm (median); trained LoRAs on 7-8B "
                f"models show {low}-{high}, adapters overdriven by a scaling bug {OVERDRIVEN_LLM_LORAS[0]}-{OVERDRIVEN_LLM_LORAS[1]}")
    return None


def write_record(folder: str | Path, record: StrengthRecord) -> None:
    (Path(folder) / STRENGTH_FILE).write_text(json.dumps(asdict(record), indent=2, sort_keys=True) + "\n")


def read_record(folder: str | Path) -> StrengthRecord | None:
    path = Path(folder) / STRENGTH_FILE
    if not path.is_file():
        return None
    try:
        return StrengthRecord(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError) as err:
        raise ConfigError(f"`{path}` is not a strength record: {err}") from err


@dataclass(frozen=True)
class StrengthCheck:
    """What the probe adapters showed against one base model's weights."""

    base_model: str
    modules: list[ModuleStrength] | None  # None: the base model's weights are not at hand
    record: StrengthRecord | None
    problem: str | None


def check_strength(generator: "AdapterGenerator", hypernet_folder: str | Path, base_model: str) -> StrengthCheck:
    """Generates the probe adapters and holds them against `base_model`'s weights and the training record."""
    config = generator.config
    record = read_record(hypernet_folder)
    norms = base_weight_norms(base_model, config.base.num_layers, config.lora.target_modules)
    if norms is None:
        return StrengthCheck(base_model, None, record, None)
    with torch.no_grad():
        embeddings = generator.embed(list(PROBE_DESCRIPTIONS))
        generated = generator.hypernet(embeddings.to(generator.device, generator.dtype))
    weights = {m: (w.A.float().cpu(), w.B.float().cpu()) for m, w in generated.items()}
    modules = measure(weights, config.lora.scaling, norms)
    return StrengthCheck(base_model, modules, record, problem(modules, record))
