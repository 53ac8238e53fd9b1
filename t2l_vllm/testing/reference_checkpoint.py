"""Writes a checkpoint in the reference's layout (SakanaAI/text-to-lora) at any base model's shapes.

The released checkpoints are gigabytes behind a download; tests need one at the
exact shapes of a real base (Mistral-7B, Llama-3.1-8B, Gemma-2-2b) to show that
`import-reference` and the adapters it makes fit what vLLM expects. This writes
an L-variant SFT run folder (`hypermod.pt`, `args.yaml`, `adapter_config.json`)
with random weights under the reference's state-dict names, at a tiny latent size
so that only the per-module A/B statistics are as large as the base requires.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
import yaml

from ..encoder import ENCODER_PRESETS, GTE_LARGE
from ..hypernet.shapes import ModuleShape

# The reference's task encoder and its embedding size, as its runs record them.
ENCODER = GTE_LARGE
EMBEDDING_DIM = ENCODER_PRESETS[GTE_LARGE].dim


def write_reference_checkpoint(
    folder: str | Path,
    layers: int,
    shapes: Mapping[str, ModuleShape],
    rank: int = 8,
    latent: int = 16,
    head_in: int = 16,
    seed: int = 0,
) -> Path:
    """An L-variant SFT reference run targeting `shapes` (module -> in/out) on `layers` layers."""
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}

    def randn(*size: int) -> torch.Tensor:
        return torch.randn(*size, generator=generator) * 0.02

    def linear(name: str, n_in: int, n_out: int) -> None:
        state[f"{name}.weight"], state[f"{name}.bias"] = randn(n_out, n_in), randn(n_out)

    def norm(name: str, size: int) -> None:
        state[f"{name}.weight"], state[f"{name}.bias"] = 1 + randn(size), randn(size)

    linear("task_encoder.mlp.0", EMBEDDING_DIM, latent // 2)
    norm("task_encoder.mlp.1", latent // 2)
    state["layer_depth_encoder.0.weight"] = randn(layers, latent // 4)
    norm("layer_depth_encoder.1", latent // 4)
    state["layer_type_encoder.0.weight"] = randn(len(shapes), latent // 4)
    norm("layer_type_encoder.1", latent // 4)
    linear("mixer.1", latent, 4 * latent)
    linear("mixer.4", 4 * latent, latent)
    for block in ("mlp1", "mlp2"):
        norm(f"{block}.mlp.0", latent)
        linear(f"{block}.mlp.1", latent, 4 * latent)
        linear(f"{block}.mlp.4", 4 * latent, latent)
    norm("mlp3.0", latent)
    linear("mlp3.1", latent, 4 * latent)
    linear("mlp3.4", 4 * latent, head_in)
    for module, shape in shapes.items():
        linear(f"heads.{module}", head_in, rank * (shape.in_features + shape.out_features))
        for stat in ("AB_offset", "mean_recon_target", "std_recon_target"):
            state[f"{stat}.A.{module}"] = randn(layers, rank, shape.in_features)
            state[f"{stat}.B.{module}"] = randn(layers, shape.out_features, rank)

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / "hypermod.pt")
    args = {"training_task": "sft", "emb_model": ENCODER, "encoder_type": "linear", "shared_AB_head": False}
    (folder / "args.yaml").write_text(yaml.safe_dump(args))
    adapter = {"peft_type": "LORA", "r": rank, "lora_alpha": 16, "use_rslora": True, "target_modules": list(shapes)}
    (folder / "adapter_config.json").write_text(json.dumps(adapter))
    return folder
