"""Supervised training of adapters through a frozen base model: T2L SFT and plain LoRAs.

Each step samples a batch that mixes tasks (one example per task, as the
reference's 8 tasks x 1 example), gives every example one of its task's
descriptions, asks the adapter source for one adapter per example (a hypernetwork
generates them in one pass; a plain LoRA shares one), applies them functionally
to the frozen base model, and minimises the
completion's cross-entropy (label smoothing) plus an L2 penalty on the generated
A and B. AdamW with linear warm-up then linear decay, gradient clipping.
Checkpoints hold the source (a hypernetwork checkpoint or a PEFT folder) and the
optimiser, schedule and RNG state, so a resumed run takes the same next step as an
uninterrupted one.

Under torchrun (a `torch.distributed` process group is initialised), the ranks
start from rank 0's weights, every rank samples its own batches, and the
gradients are averaged across ranks before each step, so the ranks stay
identical and the effective batch is about ranks x batch_size (each rank's loss
is a mean over its own tokens). Rank 0 writes the weights and logs; each rank
keeps its own RNG state.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from .data import IGNORE, SFTRecord, collate, encode_example
from .functional_lora import applied_loras
from .schedule import warmup_linear_decay
from .sources import HypernetSource, SingleLoRA

logger = logging.getLogger(__name__)
STATE_FILE = "trainer_state.pt"


def distributed_rank_and_size() -> tuple[int, int]:
    """(rank, world size) of the torch.distributed group, or (0, 1) without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


@dataclass(frozen=True)
class SFTSettings:
    """The reference's SFT recipe by default (lr 2.5e-5, wd 0.01, 20% warm-up, clip 1.0, ...)."""

    steps: int = 1000
    batch_size: int = 8
    lr: float = 2.5e-5
    weight_decay: float = 0.01
    warmup_frac: float = 0.2
    grad_clip: float = 1.0
    label_smoothing: float = 0.1
    l2_generated: float = 1e-3
    max_length: int = 512
    eval_every: int = 0
    checkpoint_every: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "max_length"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"`{name}` must be positive, got {getattr(self, name)}.")
        if self.lr <= 0 or not 0 <= self.warmup_frac < 1:
            raise ConfigError(f"`lr` must be positive and `warmup_frac` in [0, 1); got {self.lr}, {self.warmup_frac}.")


class SFTTrainer:
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
        self.source, self.base, self.tokenizer, self.settings = source, base_model, tokenizer, settings
        self.base.requires_grad_(False).eval()
        self.records, self.eval_records = list(records), list(eval_records)
        self.by_task: dict[str, list[int]] = {}
        for i, record in enumerate(self.records):
            self.by_task.setdefault(record.task, []).append(i)
        self.tasks = sorted(self.by_task)
        self.tokens = {id(r): encode_example(tokenizer, r, settings.max_length) for r in (*self.records, *self.eval_records)}
        self.optimizer = torch.optim.AdamW(source.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: warmup_linear_decay(step, settings.steps, settings.warmup_frac)
        )
        self.rank, self.world_size = distributed_rank_and_size()
        if self.world_size > 1:
            with torch.no_grad():
                for tensor in source.state_dict().values():
                    torch.distributed.broadcast(tensor, src=0)
        self.rng = random.Random(settings.seed + self.rank)  # each rank its own batches
        self.step = 0
        torch.manual_seed(settings.seed + self.rank)

    # --- one step ----------------------------------------------------------------
    def sample(self) -> tuple[list[SFTRecord], list[str]]:
        """A batch mixing tasks: a task, then one of its examples and one of its descriptions."""
        records = [self.records[self.rng.choice(self.by_task[self.rng.choice(self.tasks)])] for _ in range(self.settings.batch_size)]
        return records, [self.rng.choice(r.descriptions) for r in records]

    def loss(self, records: Sequence[SFTRecord], descriptions: Sequence[str], training: bool) -> tuple[torch.Tensor, torch.Tensor]:
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

    def train_step(self) -> float:
        self.source.train()
        records, descriptions = self.sample()
        total, ce = self.loss(records, descriptions, training=True)
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        if self.world_size > 1:
            self._average_gradients()
        nn.utils.clip_grad_norm_(self.source.parameters(), self.settings.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return ce.item()

    @torch.no_grad()
    def _average_gradients(self) -> None:
        """One all-reduce over every gradient, flattened, then divided by the world size."""
        params = [p for p in self.source.parameters() if p.requires_grad]
        for p in params:
            if p.grad is None:  # a parameter this rank's batch did not reach still takes part
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.flatten() for p in params])
        torch.distributed.all_reduce(flat)
        flat /= self.world_size
        for p, g in zip(params, flat.split([p.numel() for p in params])):
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
            losses.append(self.loss(chunk, [r.descriptions[0] for r in chunk], training=False)[1].item() * len(chunk))
        return sum(losses) / len(records)

    def train(self, output: str | Path | None = None, log: Callable[[str], None] = logger.info) -> list[float]:
        """Runs to `settings.steps`, evaluating and checkpointing as configured."""
        from tqdm.auto import tqdm

        history = []
        s = self.settings
        main = self.rank == 0
        with tqdm(total=s.steps, initial=self.step, desc="sft", disable=None if main else True) as bar:
            while self.step < s.steps:
                history.append(self.train_step())
                bar.update(1)
                bar.set_postfix(loss=f"{history[-1]:.4f}")
                if main and s.eval_every and self.step % s.eval_every == 0 and self.eval_records:
                    log(f"step {self.step}: eval loss {self.evaluate():.4f}")
                if output and s.checkpoint_every and self.step % s.checkpoint_every == 0:
                    self.save(Path(output) / f"step-{self.step}")
        if output:
            self.save(output)
        return history

    # --- checkpoints -------------------------------------------------------------
    def _state_file(self, folder: Path) -> Path:
        return folder / (STATE_FILE if self.world_size == 1 else f"trainer_state.rank{self.rank}.pt")

    def save(self, folder: str | Path) -> None:
        """Rank 0 writes the weights; every rank writes its own optimiser, schedule and RNG state."""
        folder = Path(folder)
        if self.rank == 0:
            self.source.save(folder)
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(
            {
                "step": self.step,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "python_rng": self.rng.getstate(),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
            },
            self._state_file(folder),
        )
        if self.world_size > 1:
            torch.distributed.barrier()  # the checkpoint is whole before any rank goes on

    def resume(self, folder: str | Path) -> None:
        """Restores weights, optimiser, schedule and RNG from `save`'s folder."""
        folder = Path(folder)
        state_file = self._state_file(folder)
        if not state_file.is_file():
            raise ConfigError(f"`{folder}` has no `{state_file.name}`: resume with the number of processes that wrote it.")
        self.source.load(folder)
        state = torch.load(state_file, weights_only=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.rng.setstate(state["python_rng"])
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda_rng"])
        self.step = state["step"]
