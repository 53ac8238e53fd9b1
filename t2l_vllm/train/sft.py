"""Supervised training of adapters through a frozen base model: T2L SFT and plain LoRAs.

Each step samples a batch that mixes tasks (one example per task, as the
reference's 8 tasks x 1 example), gives every example one of its task's
descriptions, asks the adapter source for one adapter per example (a hypernetwork
generates them in one pass; a plain LoRA shares one), applies them functionally
to the frozen base model, and minimises the completion's cross-entropy (label
smoothing) plus an L2 penalty on the generated A and B. The optimiser, schedule,
random streams, checkpoints and resume are the shared `loop.Trainer`'s; the
weights are saved as the source saves them (a hypernetwork checkpoint or a PEFT
folder).

Under torchrun (a `torch.distributed` process group is initialised), the ranks
start from rank 0's weights, every rank samples its own batches, and the
gradients are averaged across ranks before each step, so the ranks stay
identical and the effective batch is about ranks x batch_size (each rank's loss
is a mean over its own tokens). Rank 0 writes the weights and logs; each rank
keeps its own training state.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..strength import PROBE_DESCRIPTIONS, StrengthRecord, measure, overall, weight_norms, write_record
from .data import IGNORE, SFTRecord, collate, encode_example
from .functional_lora import applied_loras
from .loop import LoopSettings, Trainer
from .sources import HypernetSource, SingleLoRA

logger = logging.getLogger(__name__)


def distributed_rank_and_size() -> tuple[int, int]:
    """(rank, world size) of the torch.distributed group, or (0, 1) without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


@dataclass(frozen=True)
class SFTSettings(LoopSettings):
    """The reference's SFT recipe by default (lr 2.5e-5, wd 0.01, 20% warm-up, clip 1.0, ...)."""

    steps: int = 1000
    lr: float = 2.5e-5
    weight_decay: float = 0.01
    warmup_frac: float = 0.2
    grad_clip: float = 1.0
    batch_size: int = field(default=8, metadata={"help": "examples per step, each with the adapter of one of its task's descriptions"})
    label_smoothing: float = field(default=0.1, metadata={"help": "label smoothing of the training cross-entropy (not of the eval loss)"})
    l2_generated: float = field(default=1e-3, metadata={"help": "weight of the mean square of the generated A and B in the loss"})
    max_length: int = field(default=512, metadata={"help": "tokens per example (prompt and answer); longer ones are cut"})

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("batch_size", "max_length"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"`{name}` must be positive, got {getattr(self, name)}.")


class SFTTrainer(Trainer):
    """Trains `source` in place; the base model (and a hypernetwork's encoder) stay frozen."""

    def __init__(
        self,
        source: HypernetSource | SingleLoRA,
        base_model: nn.Module,
        tokenizer: Any,
        records: Sequence[SFTRecord],
        settings: SFTSettings = SFTSettings(),
        eval_records: Sequence[SFTRecord] = (),
    ) -> None:
        self.source, self.base, self.tokenizer = source, base_model, tokenizer
        self.base.requires_grad_(False).eval()
        self.records, self.eval_records = list(records), list(eval_records)
        self.by_task: dict[str, list[int]] = {}
        for i, record in enumerate(self.records):
            self.by_task.setdefault(record.task, []).append(i)
        self.tasks = sorted(self.by_task)
        self.tokens = {id(r): encode_example(tokenizer, r, settings.max_length) for r in (*self.records, *self.eval_records)}
        rank, world_size = distributed_rank_and_size()
        if world_size > 1:
            with torch.no_grad():
                for tensor in source.state_dict().values():
                    torch.distributed.broadcast(tensor, src=0)
        super().__init__(source.parameters(), settings, next(source.parameters()).device, rank, world_size)

    # --- one step ----------------------------------------------------------------
    def sample(self) -> tuple[list[SFTRecord], list[str]]:
        """A batch mixing tasks: a task, then one of its examples and one of its descriptions."""
        rng = self.rng.python
        records = [self.records[rng.choice(self.by_task[rng.choice(self.tasks)])] for _ in range(self.settings.batch_size)]
        return records, [rng.choice(r.descriptions) for r in records]

    def loss(self) -> torch.Tensor:
        self.source.train()
        return self.batch_loss(*self.sample(), training=True)[0]

    def batch_loss(self, records: Sequence[SFTRecord], descriptions: Sequence[str], training: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(total loss, cross-entropy) for examples, each with its own generated adapter."""
        lora = self.source.lora
        weights = self.source.adapters(descriptions)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        batch = collate([self.tokens[id(r)] for r in records], pad)  # padding is masked out of attention and loss
        device = next(self.source.parameters()).device
        batch = {k: v.to(device) for k, v in batch.items()}
        dropout = lora.dropout if training else 0.0
        with applied_loras(self.base, weights, lora.scaling, dropout):
            logits = self.base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        ce = nn.functional.cross_entropy(
            logits[:, :-1].flatten(0, 1).float(),
            batch["labels"][:, 1:].flatten(),
            ignore_index=IGNORE,
            label_smoothing=self.settings.label_smoothing if training else 0.0,
        )
        l2 = sum(A.pow(2).mean() + B.pow(2).mean() for A, B in weights.values()) / len(weights)
        return ce + self.settings.l2_generated * l2, ce

    @torch.no_grad()
    def reduce_gradients(self) -> None:
        """Under torchrun: one all-reduce over every gradient, flattened, then divided by the world size."""
        if self.world_size == 1:
            return
        for p in self.parameters:
            if p.grad is None:  # a parameter this rank's batch did not reach still takes part
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.flatten() for p in self.parameters])
        torch.distributed.all_reduce(flat)
        flat /= self.world_size
        for p, g in zip(self.parameters, flat.split([p.numel() for p in self.parameters])):
            p.grad.copy_(g.view_as(p))

    @torch.no_grad()
    def evaluate(self, records: Sequence[SFTRecord] | None = None) -> float:
        """Mean completion cross-entropy with each record's first description, no dropout."""
        records = list(records if records is not None else self.eval_records)
        if not records:
            return float("nan")
        self.source.eval()
        losses = []
        for start in range(0, len(records), self.settings.batch_size):
            chunk = records[start : start + self.settings.batch_size]
            losses.append(self.batch_loss(chunk, [r.descriptions[0] for r in chunk], training=False)[1].item() * len(chunk))
        return sum(losses) / len(records)

    def log_line(self, recent_loss: float) -> str:
        return f"loss {recent_loss:.4f}" + (f", eval loss {self.evaluate():.4f}" if self.eval_records else "")

    @torch.no_grad()
    def strength_record(self) -> StrengthRecord:
        """The strength of the probe adapters at the training scaling, on this base (see `strength.py`)."""
        was_training = self.source.training
        self.source.eval()
        try:
            weights = self.source.adapters(list(PROBE_DESCRIPTIONS))
        finally:
            self.source.train(was_training)
        lora = self.source.lora
        params = dict(self.base.named_parameters())
        layers = next(iter(weights.values()))[0].shape[1]  # A: (N, layers, r, in)
        norms = weight_norms(params.__getitem__, layers, tuple(weights))
        return StrengthRecord(overall(measure(weights, lora.scaling, norms)), lora.scaling, self.source.hypernet.config.base.name, "SFT")

    # --- checkpoints -------------------------------------------------------------
    def save_weights(self, folder: Path) -> None:
        self.source.save(folder)
        if isinstance(self.source, HypernetSource):  # what `t2l-vllm check` holds served adapters against
            write_record(folder, self.strength_record())

    def load_weights(self, folder: Path) -> None:
        self.source.load(folder)
