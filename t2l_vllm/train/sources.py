"""Where a training step's adapters come from: a hypernetwork, or one plain LoRA.

Both are modules with the same small interface, so one trainer serves T2L SFT,
the task-specific LoRA baselines and the multi-task LoRA baseline:

    adapters(descriptions) -> {module: (A (N, layers, r, in), B (N, layers, out, r))}
    save(folder) / load(folder)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch import nn

from ..adapters import LoRAAdapter, peft_key
from ..encoder import TaskEncoder, check_reads
from ..strength import PROBE_DESCRIPTIONS
from ..hypernet.checkpoint import load_checkpoint, save_checkpoint
from ..hypernet.config import LoraSettings
from ..hypernet.model import TextToLoRA
from ..hypernet.shapes import BaseModelShapes

Weights = dict[str, tuple[torch.Tensor, torch.Tensor]]


class HypernetSource(nn.Module):
    """One generated adapter per example; the encoder is frozen, so descriptions are embedded once."""

    def __init__(self, hypernet: TextToLoRA, encoder: TaskEncoder, descriptions: Iterable[str]) -> None:
        super().__init__()
        self.hypernet = hypernet
        self.lora = hypernet.config.lora
        check_reads(encoder, hypernet.config.encoder)
        self.encoder_weights = encoder.tuned_weights
        texts = sorted(set(descriptions) | set(PROBE_DESCRIPTIONS))  # the probes: for the trainer's strength record
        device = next(hypernet.parameters()).device
        self._embeddings = dict(zip(texts, encoder.encode(texts).to(device)))

    def adapters(self, descriptions: Sequence[str]) -> Weights:
        generated = self.hypernet(torch.stack([self._embeddings[d] for d in descriptions]))
        return {m: (w.A, w.B) for m, w in generated.items()}

    def save(self, folder: Path) -> None:
        save_checkpoint(self.hypernet, folder, self.encoder_weights)

    def load(self, folder: Path) -> None:
        model, _ = load_checkpoint(folder, device=next(self.hypernet.parameters()).device)
        self.hypernet.load_state_dict(model.state_dict())


class SingleLoRA(nn.Module):
    """One trainable LoRA shared by every example, initialised as PEFT does (B = 0)."""

    def __init__(self, shapes: BaseModelShapes, lora: LoraSettings, seed: int = 0) -> None:
        super().__init__()
        self.lora, self.base_name = lora, shapes.name
        generator = torch.Generator().manual_seed(seed)
        self.A, self.B = nn.ParameterDict(), nn.ParameterDict()
        for module in lora.target_modules:
            s = shapes.module_shape(module)
            bound = 1 / math.sqrt(s.in_features)  # kaiming-uniform with a=sqrt(5), PEFT's lora_A init
            self.A[module] = nn.Parameter((torch.rand(shapes.num_layers, lora.rank, s.in_features, generator=generator) * 2 - 1) * bound)
            self.B[module] = nn.Parameter(torch.zeros(shapes.num_layers, s.out_features, lora.rank))

    def adapters(self, descriptions: Sequence[str]) -> Weights:
        n = len(descriptions)
        return {m: (self.A[m].expand(n, *self.A[m].shape), self.B[m].expand(n, *self.B[m].shape)) for m in self.lora.target_modules}

    def to_adapter(self, name: str) -> LoRAAdapter:
        tensors = {}
        for m in self.lora.target_modules:
            for layer in range(self.A[m].shape[0]):
                tensors[peft_key(layer, m, "A")] = self.A[m][layer].detach().cpu().clone()
                tensors[peft_key(layer, m, "B")] = self.B[m][layer].detach().cpu().clone()
        return LoRAAdapter(name=name, lora=self.lora, tensors=tensors, base_model=self.base_name)

    def save(self, folder: Path) -> None:
        self.to_adapter(Path(folder).name).save_peft(folder)

    def load(self, folder: Path) -> None:
        adapter = LoRAAdapter.load_peft(folder)
        with torch.no_grad():
            for m in self.lora.target_modules:
                A, B = adapter.matrices(m)
                self.A[m].copy_(A)
                self.B[m].copy_(B)
