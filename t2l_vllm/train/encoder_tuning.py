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
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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


class EncoderTuner(Trainer):
    """Tunes `hypernet`'s encoder; saves `hypernet` (untouched) as a checkpoint that reads the tuned encoder.

    The hypernetwork is carried, not trained: tuning comes before it is trained,
    since everything it learns depends on the embeddings.
    """

    def __init__(
        self, hypernet: TextToLoRA, descriptions: Mapping[str, Sequence[str]], settings: EncoderTuningSettings = EncoderTuningSettings(),
        device: str | torch.device = "cpu",
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
        self.texts = {task: [self._text(d) for d in usable[task]] for task in self.tasks}
        super().__init__(self.tuned.values(), settings, self.device)

    def _text(self, description: str) -> str:
        """The text exactly as `TaskEncoder.encode` gives it to the model."""
        return add_full_stop(description) if self.settings_in.add_full_stop else description

    def _embed(self, texts: list[str]) -> torch.Tensor:
        features = self.model.preprocess(texts)
        features = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in features.items()}
        return F.normalize(self.model(features)["sentence_embedding"], dim=-1)

    def loss(self) -> torch.Tensor:
        self.model.train()
        rng = self.rng.python
        tasks = rng.sample(self.tasks, min(self.settings.tasks_per_batch, len(self.tasks)))
        pairs = [rng.sample(self.texts[task], 2) for task in tasks]
        anchors, partners = self._embed([a for a, _ in pairs]), self._embed([b for _, b in pairs])
        logits = self.settings.logit_scale * anchors @ partners.T
        target = torch.arange(len(tasks), device=logits.device)
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2

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
