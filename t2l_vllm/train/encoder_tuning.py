"""Tuning the task encoder's top layers so that descriptions of one task lie together, of different tasks apart.

T2L reads a frozen sentence embedding, in which the wording of a description
weighs more than the task it names: in MiniLM's space two descriptions of one
toy task lie farther apart than the centroids of two tasks, and the word that
tells a pair of tasks apart (forward/backward, first/last) is among the
faintest differences. A hypernetwork trained on such inputs learns its tasks
as clusters of wordings and reads a new wording of a new task as its nearest
cluster. This trainer tunes the encoder's top `layers` transformer layers with
nothing but which task each training description names (the hypernetwork's own
training data, no adapter, no base model), so the embedding carries the words
that tell tasks apart; the hypernetwork is then trained on the tuned
embeddings and its checkpoint keeps the tuned layers (`encoder.safetensors`).

The loss is the symmetric InfoNCE of CLIP and of sentence-transformers'
MultipleNegativesRankingLoss: a step draws `tasks_per_batch` distinct tasks and
two different descriptions of each, and each description must pick its
partner out of the batch by cosine similarity times `logit_scale`.

Three things keep it from learning the wording instead of the task:

- `shared_positions`: one step draws the same two positions for every task (each
  modulo the task's count). Where descriptions at one position share a template
  (tasks rendered from one family's templates), a pair is two templates of one
  task and every negative of a family is in the anchor's own template, so only
  the task's words (its k, its direction) can find the partner;
- `augment`: a function of (task, description, random stream) applied to every
  drawn description, which may change its surface but not its task (the toy
  world's is `toy.augment.augment`);
- `validation`: descriptions the tuning never draws (other templates of the same
  tasks), on which `evaluate` measures how often a description's nearest task
  centroid is its own; `log_every` logs it and `validation_history` keeps it.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from ..encoder import TaskEncoder, add_full_stop, load_sentence_transformer, top_layer_parameters, write_tuned_weights
from ..errors import CheckpointError, ConfigError
from ..hypernet.checkpoint import load_encoder_weights, save_checkpoint
from ..hypernet.model import TextToLoRA, build_hypernet
from .data import TrainingDataError
from .loop import LoopSettings, Trainer


@dataclass(frozen=True)
class EncoderTuningSettings(LoopSettings):
    steps: int = 300
    lr: float = 5e-5
    tasks_per_batch: int = field(default=32, metadata={"help": "distinct tasks a step draws, two descriptions each"})
    layers: int = field(default=2, metadata={"help": "top transformer layers of the encoder to tune; the rest stay frozen"})
    logit_scale: float = field(default=20.0, metadata={"help": "cosine similarities are multiplied by this before the softmax"})
    shared_positions: bool = field(default=False, metadata={
        "help": "draw the same two description positions for every task of a step (modulo its count): where a position is a "
                "template, every negative shares the anchor's template"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.tasks_per_batch < 2:
            raise ConfigError(f"`tasks_per_batch` must be at least 2 (the other tasks are the negatives), got {self.tasks_per_batch}.")
        if self.layers < 1:
            raise ConfigError(f"`layers` must be at least 1, got {self.layers}.")
        if self.logit_scale <= 0:
            raise ConfigError(f"`logit_scale` must be positive, got {self.logit_scale}.")


def descriptions_by_task(records: Sequence) -> dict[str, list[str]]:
    """Each task's distinct descriptions, in first-seen order, from SFT records (`train.data.SFTRecord`)."""
    by_task: dict[str, dict[str, None]] = {}
    for record in records:
        by_task.setdefault(record.task, {}).update(dict.fromkeys(record.descriptions))
    return {task: list(descriptions) for task, descriptions in by_task.items()}


Augment = Callable[[str, str, random.Random], str]  # (task, description, random stream) -> a description of the same task


class EncoderTuner(Trainer):
    """Tunes `hypernet`'s encoder; saves `hypernet` (untouched) as a checkpoint that reads the tuned encoder.

    The hypernetwork is carried, not trained: tuning comes before it is trained,
    since everything it learns depends on the embeddings. `validation` maps tasks
    of `descriptions` to descriptions never drawn in tuning (`evaluate`);
    `augment` rewrites every drawn description (see the module's docstring).
    """

    def __init__(
        self, hypernet: TextToLoRA, descriptions: Mapping[str, Sequence[str]], settings: EncoderTuningSettings = EncoderTuningSettings(),
        device: str | torch.device = "cpu", validation: Mapping[str, Sequence[str]] | None = None, augment: Augment | None = None,
    ) -> None:
        if hypernet.config.encoder.tuned_layers:
            raise ConfigError("this hypernetwork's encoder is already tuned; tune from the checkpoint it was built from.")
        usable = {task: list(dict.fromkeys(d)) for task, d in descriptions.items() if len(set(d)) >= 2}
        if len(usable) < 2:
            raise TrainingDataError("encoder tuning needs at least 2 tasks with 2 or more different descriptions each.")
        config = hypernet.config.replace(encoder=replace(hypernet.config.encoder, tuned_layers=settings.layers))
        self.hypernet = build_hypernet(config)
        self.hypernet.load_state_dict(hypernet.state_dict())
        self.settings_in, self.device = hypernet.config.encoder, torch.device(device)
        self.model = load_sentence_transformer(self.settings_in, self.device)  # as published; its top layers train here
        self.tuned = top_layer_parameters(self.model, settings.layers)
        for p in self.model.parameters():
            p.requires_grad_(False)
        for p in self.tuned.values():
            p.requires_grad_(True)
        self.tasks = sorted(usable)
        self.descriptions = {task: usable[task] for task in self.tasks}
        self.texts = {task: [self._text(d) for d in usable[task]] for task in self.tasks}
        self.augment = augment
        self.validation = {task: list(v) for task, v in (validation or {}).items() if v}
        unknown = sorted(set(self.validation) - set(self.tasks))
        if unknown:
            raise TrainingDataError(f"validation descriptions of tasks the tuning does not draw: {unknown}")
        overlap = sorted(task for task, v in self.validation.items() if set(v) & set(self.descriptions[task]))
        if overlap:
            raise TrainingDataError(f"validation descriptions that the tuning also draws, of tasks {overlap}")
        self.validation_history: list[tuple[int, float]] = []
        super().__init__(self.tuned.values(), settings, self.device)

    def _text(self, description: str) -> str:
        """The text exactly as `TaskEncoder.encode` gives it to the model."""
        return add_full_stop(description) if self.settings_in.add_full_stop else description

    def _embed(self, texts: list[str]) -> torch.Tensor:
        features = self.model.preprocess(texts)
        features = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in features.items()}
        return F.normalize(self.model(features)["sentence_embedding"], dim=-1)

    def pairs(self) -> tuple[list[str], list[tuple[str, str]]]:
        """A step's tasks and two different descriptions of each, augmented when an `augment` is given."""
        rng = self.rng.python
        tasks = rng.sample(self.tasks, min(self.settings.tasks_per_batch, len(self.tasks)))
        if self.settings.shared_positions:
            i, j = rng.sample(range(max(len(self.descriptions[t]) for t in tasks)), 2)
            pairs = [self._positions(self.descriptions[t], i, j, rng) for t in tasks]
        else:
            pairs = [tuple(rng.sample(self.descriptions[t], 2)) for t in tasks]
        if self.augment is not None:
            pairs = [(self.augment(t, a, rng), self.augment(t, b, rng)) for t, (a, b) in zip(tasks, pairs)]
        return tasks, pairs

    @staticmethod
    def _positions(descriptions: Sequence[str], i: int, j: int, rng: random.Random) -> tuple[str, str]:
        """Descriptions i and j modulo their count; another j when the two fall on one."""
        n = len(descriptions)
        a, b = i % n, j % n
        if a == b:
            b = rng.choice([k for k in range(n) if k != a])
        return descriptions[a], descriptions[b]

    def loss(self) -> torch.Tensor:
        self.model.train()
        tasks, pairs = self.pairs()
        anchors = self._embed([self._text(a) for a, _ in pairs])
        partners = self._embed([self._text(b) for _, b in pairs])
        logits = self.settings.logit_scale * anchors @ partners.T
        target = torch.arange(len(tasks), device=logits.device)
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2

    @torch.no_grad()
    def evaluate(self) -> float:
        """How often a validation description's nearest task centroid (of the tuning's own descriptions, by
        cosine) is its own task; nan without validation descriptions."""
        if not self.validation:
            return float("nan")
        self.model.eval()
        tuned = self._embed_all([text for t in self.tasks for text in self.texts[t]]).split([len(self.texts[t]) for t in self.tasks])
        centroids = F.normalize(torch.stack([e.mean(0) for e in tuned]), dim=-1)  # (tasks, dim)
        owners = torch.tensor([self.tasks.index(t) for t, v in self.validation.items() for _ in v])
        validation = self._embed_all([self._text(d) for v in self.validation.values() for d in v])
        return float(((validation @ centroids.T).argmax(1) == owners).float().mean())

    def _embed_all(self, texts: list[str], batch: int = 64) -> torch.Tensor:
        """(N, dim) normalised embeddings of `texts`, embedded in batches of similar length (less padding)."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        chunks = [self._embed([texts[i] for i in order[start : start + batch]]) for start in range(0, len(texts), batch)]
        return torch.cat(chunks)[torch.argsort(torch.tensor(order))]

    def log_line(self, recent_loss: float) -> str:
        if not self.validation:
            return super().log_line(recent_loss)
        accuracy = self.evaluate()
        self.validation_history.append((self.step, accuracy))
        return f"loss {recent_loss:.4f}, validation nearest-task accuracy {accuracy:.3f}"

    @property
    def tuned_weights(self) -> dict[str, torch.Tensor]:
        return {name: p.detach().to("cpu", torch.float32).clone() for name, p in self.tuned.items()}

    def tuned_encoder(self) -> TaskEncoder:
        """A fresh encoder with the tuned layers, in evaluation mode (what the hypernetwork will read)."""
        return TaskEncoder(self.hypernet.config.encoder, device=self.device, tuned_weights=self.tuned_weights)

    def state_extra(self) -> dict[str, list[str]]:
        return {"tasks": self.tasks}

    def check_state(self, state: dict, folder: Path) -> None:
        if state.get("tasks") != self.tasks:
            raise CheckpointError(f"`{folder}` was tuned on other tasks than these.")

    def save_weights(self, folder: Path) -> None:
        save_checkpoint(self.hypernet, folder, self.tuned_weights)

    def load_weights(self, folder: Path) -> None:
        try:
            write_tuned_weights(self.model, self.hypernet.config.encoder, load_encoder_weights(folder, self.hypernet.config))
        except ConfigError as err:
            raise CheckpointError(f"`{folder}` does not hold this run's tuned encoder layers: {err}") from err
