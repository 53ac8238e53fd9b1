"""What every trainer shares: one schedule, one random stream, one training state on disk, one way to resume.

The toy base model (`toy/base.py`), T2L SFT and plain LoRAs (`sft`) and
reconstruction (`recon`) each subclass `Trainer` and say only how a batch's
loss is computed and how their weights are saved. The rest is here, once:

- AdamW and `schedule.warmup_linear_decay`, gradient clipping;
- `TrainerRNG`: every random draw of a step (batch sampling from its Python
  stream, dropout and any torch sampling from its torch stream) comes from the
  trainer's own streams, seeded from `seed` (+ the rank under torchrun) and
  never from the caller's global RNG, so a run depends only on its settings;
- `save(folder)`: the weights, in the subclass's format, and
  `trainer_state.pt` (step, optimiser, schedule, RNG); `resume(folder)`
  restores both, and the resumed run takes the same next step as one that never
  stopped. `train(output)` checkpoints to `output/step-N` every
  `checkpoint_every` steps and saves the result to `output`.
"""

from __future__ import annotations

import logging
import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from .schedule import warmup_linear_decay

logger = logging.getLogger(__name__)
STATE_FORMAT = "t2l_vllm.trainer_state/1"


@dataclass(frozen=True)
class LoopSettings:
    """The optimisation settings every trainer has; subclasses give their own defaults.

    The help lives here once: a subclass that redeclares a field only to change its
    default keeps this help (`cli.settings_args.Setting.help` looks it up).
    """

    steps: int = field(default=1000, metadata={"help": "optimisation steps; the schedule warms up, then decays linearly to 0 at the last"})
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate (AdamW)"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    warmup_frac: float = field(default=0.1, metadata={"help": "fraction of the steps spent warming the learning rate up from 0"})
    grad_clip: float = field(default=1.0, metadata={"help": "largest gradient norm; larger ones are scaled down to it"})
    seed: int = field(default=0, metadata={"help": "seed of the weights' initialisation and of every random draw in training"})
    log_every: int = field(default=0, metadata={"help": "log the mean recent loss (and the trainer's own figures) every N steps; 0: never"})
    checkpoint_every: int = field(default=0, metadata={"help": "write step-N/ into the output folder every N steps; 0: never"})

    def __post_init__(self) -> None:
        if self.steps <= 0:
            raise ConfigError(f"`steps` must be positive, got {self.steps}.")
        if self.lr <= 0:
            raise ConfigError(f"`lr` must be positive, got {self.lr}.")
        if self.weight_decay < 0:
            raise ConfigError(f"`weight_decay` must be >= 0, got {self.weight_decay}.")
        if not 0.0 <= self.warmup_frac < 1.0:
            raise ConfigError(f"`warmup_frac` must be in [0, 1), got {self.warmup_frac}.")
        if self.grad_clip <= 0:
            raise ConfigError(f"`grad_clip` must be positive, got {self.grad_clip}.")
        for name in ("log_every", "checkpoint_every"):
            if getattr(self, name) < 0:
                raise ConfigError(f"`{name}` must be >= 0 (0: never), got {getattr(self, name)}.")


class TrainerRNG:
    """A trainer's own random streams: Python's for sampling, torch's (CPU, and CUDA on a GPU) for the rest."""

    def __init__(self, seed: int, device: torch.device) -> None:
        self.python = random.Random(seed)
        self.device = torch.device(device)
        self._torch = torch.Generator().manual_seed(seed).get_state()
        self._cuda = torch.Generator(self.device).manual_seed(seed).get_state() if self.device.type == "cuda" else None

    @contextmanager
    def active(self) -> Iterator[None]:
        """Runs the block on this trainer's torch stream; the caller's global RNG is left as it was."""
        cuda = [self.device] if self._cuda is not None else []
        with torch.random.fork_rng(devices=cuda):
            torch.set_rng_state(self._torch)
            if cuda:
                torch.cuda.set_rng_state(self._cuda, self.device)
            try:
                yield
            finally:
                self._torch = torch.get_rng_state()
                if cuda:
                    self._cuda = torch.cuda.get_rng_state(self.device)

    def state_dict(self) -> dict[str, Any]:
        return {"python": self.python.getstate(), "torch": self._torch, "cuda": self._cuda}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.python.setstate(state["python"])
        self._torch = state["torch"]
        if self._cuda is not None and state["cuda"] is not None:
            self._cuda = state["cuda"]


class Trainer(ABC):
    """Steps, checkpoints and resumes; subclasses give `loss`, `save_weights` and `load_weights`."""

    def __init__(
        self, parameters: Iterable[nn.Parameter], settings: LoopSettings, device: torch.device, rank: int = 0, world_size: int = 1
    ) -> None:
        self.settings, self.rank, self.world_size = settings, rank, world_size
        self.parameters = [p for p in parameters if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.parameters, lr=settings.lr, weight_decay=settings.weight_decay)
        schedule = partial(warmup_linear_decay, total_steps=settings.steps, warmup_frac=settings.warmup_frac)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        self.rng = TrainerRNG(settings.seed + rank, device)  # under torchrun, each rank its own batches
        self.step = 0

    # --- what a subclass says ----------------------------------------------------
    @abstractmethod
    def loss(self) -> torch.Tensor:
        """Puts the model in training mode, draws a batch from `self.rng` and returns its loss."""

    @abstractmethod
    def save_weights(self, folder: Path) -> None:
        """Writes what was trained, in the format its users read (a checkpoint, a PEFT or HF folder)."""

    @abstractmethod
    def load_weights(self, folder: Path) -> None:
        """Reads `save_weights`' folder back into the model being trained; raises `CheckpointError` if it misfits."""

    def reduce_gradients(self) -> None:
        """Called between backward and the step (SFT averages gradients across ranks here)."""

    def log_line(self, recent_loss: float) -> str:
        """What `log_every` reports besides the step."""
        return f"loss {recent_loss:.4f}"

    def state_extra(self) -> dict[str, Any]:
        """More state to save (checked by `check_state` on resume)."""
        return {}

    def check_state(self, state: dict[str, Any], folder: Path) -> None:
        """Raises `CheckpointError` when `state` was written by a run this one cannot continue."""

    # --- shared ------------------------------------------------------------------
    def train_step(self) -> float:
        """One optimisation step; returns its loss."""
        with self.rng.active():
            loss = self.loss()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        self.reduce_gradients()
        nn.utils.clip_grad_norm_(self.parameters, self.settings.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return loss.item()

    def train(self, output: str | Path | None = None, steps: int | None = None, log: Callable[[str], None] = logger.info) -> list[float]:
        """Runs `steps` more steps (default: to the end of the schedule); returns their losses.

        Checkpoints to `output/step-N` every `checkpoint_every` steps and saves to
        `output` at the end.
        """
        from tqdm.auto import tqdm

        s = self.settings
        steps = s.steps - self.step if steps is None else steps
        if steps < 0 or self.step + steps > s.steps:
            raise ConfigError(f"cannot run {steps} steps from step {self.step}: the schedule ends at `steps={s.steps}`.")
        if s.checkpoint_every and output is None:
            raise ConfigError("`checkpoint_every` needs an output folder to write the checkpoints to.")
        losses: list[float] = []
        main = self.rank == 0
        with tqdm(total=steps, desc=type(self).__name__, disable=None if main else True) as bar:
            for _ in range(steps):
                losses.append(self.train_step())
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
                if main and s.log_every and self.step % s.log_every == 0:
                    recent = losses[-s.log_every :]
                    log(f"step {self.step}: {self.log_line(sum(recent) / len(recent))}")
                if s.checkpoint_every and self.step % s.checkpoint_every == 0:
                    self.save(Path(output) / f"step-{self.step}")
        if output is not None and steps:
            self.save(output)
        return losses

    def _state_file(self, folder: Path) -> Path:
        return folder / ("trainer_state.pt" if self.world_size == 1 else f"trainer_state.rank{self.rank}.pt")

    def save(self, folder: str | Path) -> None:
        """Rank 0 writes the weights; every rank writes its own step, optimiser, schedule and RNG state."""
        folder = Path(folder)
        if self.rank == 0:
            self.save_weights(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {
            "format": STATE_FORMAT,
            "trainer": type(self).__name__,
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": self.rng.state_dict(),
            **self.state_extra(),
        }
        torch.save(state, self._state_file(folder))
        if self.world_size > 1:
            torch.distributed.barrier()  # the checkpoint is whole before any rank goes on

    def resume(self, folder: str | Path) -> int:
        """Restores the weights and training state `save` wrote; returns the step to continue from."""
        folder = Path(folder)
        state_file = self._state_file(folder)
        if not state_file.is_file():
            hint = " (resume with the number of processes that wrote it)" if self.world_size > 1 or list(folder.glob("trainer_state.rank*.pt")) else ""
            raise CheckpointError(f"`{folder}` has no `{state_file.name}`{hint}.")
        try:
            state = torch.load(state_file, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError) as err:
            raise CheckpointError(f"cannot read `{state_file}`: {err}") from err
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT or state.get("trainer") != type(self).__name__:
            raise CheckpointError(f"`{state_file}` is not a {type(self).__name__} state.")
        self.check_state(state, folder)
        self.load_weights(folder)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.rng.load_state_dict(state["rng"])
        self.step = int(state["step"])
        return self.step
