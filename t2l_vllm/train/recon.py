"""Reconstruction training: fit a hypernetwork to a library of trained task LoRAs.

Each step samples `tasks_per_batch` tasks and one description of each, generates
their adapters and takes an AdamW step on the L1 distance to the tasks' LoRAs
(mean over elements, A and B weighted equally, averaged over target modules), as
the reference's `recon_trainer.py` does (lr 1e-3, weight decay 1e-3, linear
warm-up then linear decay, gradient clipping at 1.0, 4 tasks per batch). The
optimiser, schedule, random streams, checkpoints and resume are the shared
`loop.Trainer`'s.

With `zscore=True` the heads predict z-scores against per-element statistics of
the library (the reference's `pred_z_score`): the mean and std of every A and B
element over the tasks are written into the hypernetwork's frozen buffers and the
loss is taken in z-space, so small and large elements weigh alike. An element
that never varies over the library (its std at `std_floor`) is a constant the
output transform already writes exactly (mean + floor * z), so it is left out of
the loss: in a library whose adapters touch a few rows (the toy world's cue
adapters vary in 128 of 12,288 numbers) the |z| of thousands of constants would
otherwise outweigh the rows that carry the task, and the hypernetwork would
learn to write the library's mean (measured: 0.03 exact match on training tasks
against 0.93 with the constants left out).

A library is a manifest (JSONL, or YAML holding a list) of entries
`{"task": name, "lora": "path/to/peft_folder", "descriptions": [...]}`; relative
LoRA paths are resolved against the manifest's folder.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml

from ..adapters import LoRAAdapter, peft_key
from ..descriptions import normalize_description
from ..encoder import TaskEncoder, check_reads
from ..errors import CheckpointError, ConfigError, InvalidDescriptionError, ShapeMismatchError
from ..jsonl import read_jsonl
from ..hypernet.checkpoint import load_checkpoint, save_checkpoint
from ..hypernet.config import HypernetConfig, OutputTransform
from ..hypernet.model import LoraWeights, TextToLoRA
from .data import TrainingDataError
from .loop import LoopSettings, Trainer

logger = logging.getLogger(__name__)

# Added to the std by `TextToLoRA._to_raw`; the loss divides by the same quantity.
_STD_EPS = 1e-10


@dataclass(frozen=True)
class ReconSettings(LoopSettings):
    """Reconstruction-training settings; the defaults are the reference's.

    `std_floor` bounds the z-score std from below: an element that (nearly) never
    varies over the library would otherwise get a weight of up to 1e10 in the loss.
    """

    steps: int = 10_000
    lr: float = 1e-3
    weight_decay: float = 1e-3
    warmup_frac: float = 0.1
    grad_clip: float = 1.0
    log_every: int = 100
    tasks_per_batch: int = field(default=4, metadata={"help": "tasks per step, one description of each"})
    zscore: bool = field(default=False, metadata={"help": "predict z-scores against the library's per-element mean and std"})
    std_floor: float = field(default=1e-6, metadata={"help": "smallest std a z-score divides by"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.tasks_per_batch <= 0:
            raise ConfigError(f"`tasks_per_batch` must be positive, got {self.tasks_per_batch}.")
        if self.std_floor <= 0:
            raise ConfigError(f"`std_floor` must be positive, got {self.std_floor}.")


@dataclass(frozen=True)
class ReconTarget:
    """One task of the library: its trained LoRA and the descriptions that should yield it."""

    task: str
    folder: Path
    lora: LoRAAdapter
    descriptions: tuple[str, ...]


def with_zscore(config: HypernetConfig) -> HypernetConfig:
    """The config of a hypernetwork whose heads predict z-scores (`ReconSettings.zscore=True` needs it)."""
    return config.replace(output=OutputTransform(zscore=True))


# --- the library ---------------------------------------------------------------


def load_recon_library(path: str | Path) -> list[ReconTarget]:
    """Reads a manifest and the LoRA folders it names; raises `TrainingDataError` naming the entry."""
    path = Path(path)
    if path.suffix == ".jsonl":
        entries = read_jsonl(path, TrainingDataError)
    elif path.suffix in (".yaml", ".yml"):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise TrainingDataError(f"{path}: cannot read it: {err}") from err
        entries = _yaml_entries(path, text)
    else:
        raise TrainingDataError(f"training library `{path}` must be a .jsonl, .yaml or .yml file.")
    if not entries:
        raise TrainingDataError(f"training library `{path}` lists no tasks.")
    targets: list[ReconTarget] = []
    seen: dict[str, str] = {}
    for where, entry in entries:
        target = _target(path, where, entry)
        if target.task in seen:
            raise TrainingDataError(f"{where}: task `{target.task}` is listed twice (first at {seen[target.task]}).")
        seen[target.task] = where
        targets.append(target)
    return targets


def _yaml_entries(path: Path, text: str) -> list[tuple[str, Any]]:
    """The entries of a YAML list, each located by the line it starts on."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as err:
        raise TrainingDataError(f"{path}: not valid YAML: {err}") from err
    finally:
        loader.dispose()
    if data is None:
        return []
    if not isinstance(data, list):
        raise TrainingDataError(f"{path}: the YAML document must be a list of tasks, got {type(data).__name__}.")
    return [(f"{path}:{item.start_mark.line + 1}", entry) for item, entry in zip(node.value, data)]


def _target(manifest: Path, where: str, entry: Any) -> ReconTarget:
    if not isinstance(entry, dict):
        raise TrainingDataError(f"{where}: an entry must be a mapping with task, lora and descriptions.")
    missing = [k for k in ("task", "lora", "descriptions") if k not in entry]
    if missing:
        raise TrainingDataError(f"{where}: missing field {', '.join(f'`{k}`' for k in missing)}.")
    task, lora, descriptions = entry["task"], entry["lora"], entry["descriptions"]
    if not isinstance(task, str) or not task.strip():
        raise TrainingDataError(f"{where}: `task` must be a non-empty string.")
    if not isinstance(lora, str) or not lora.strip():
        raise TrainingDataError(f"{where}: `lora` must be the path of a PEFT folder.")
    if not isinstance(descriptions, list) or not descriptions:
        raise TrainingDataError(f"{where}: task `{task}` has empty `descriptions`; give at least one.")
    try:
        descriptions = tuple(normalize_description(d) for d in descriptions)
    except InvalidDescriptionError as err:
        raise TrainingDataError(f"{where}: task `{task}`: {err}") from err
    folder = (manifest.parent / lora).resolve()
    try:
        adapter = LoRAAdapter.load_peft(folder, name=task)
    except (CheckpointError, KeyError, ValueError) as err:
        raise TrainingDataError(f"{where}: task `{task}`: unreadable LoRA folder `{folder}`: {err}") from err
    return ReconTarget(task=task, folder=folder, lora=adapter, descriptions=descriptions)


def check_targets_fit(config: HypernetConfig, targets: list[ReconTarget]) -> None:
    """Raises `ShapeMismatchError` naming the first LoRA whose rank, scaling, modules, layers or shapes misfit `config`."""
    want_modules = set(config.lora.target_modules)
    n_layers, r = config.base.num_layers, config.lora.rank
    for t in targets:
        where = f"LoRA `{t.folder}` (task `{t.task}`)"
        if t.lora.lora.rank != r:
            raise ShapeMismatchError(f"{where} has rank {t.lora.lora.rank}; the hypernetwork makes rank {r}.")
        if set(t.lora.lora.target_modules) != want_modules:
            raise ShapeMismatchError(
                f"{where} targets modules {sorted(t.lora.lora.target_modules)}; "
                f"the hypernetwork makes {sorted(want_modules)}."
            )
        if abs(t.lora.lora.scaling - config.lora.scaling) > 1e-6 * config.lora.scaling:
            # The same A and B with another alpha or rsLoRA setting is another weight update.
            raise ShapeMismatchError(
                f"{where} is scaled by {t.lora.lora.scaling:.4g} (alpha, rsLoRA); "
                f"the hypernetwork's adapters by {config.lora.scaling:.4g}."
            )
        expected = {}
        for module in config.lora.target_modules:
            s = config.base.module_shape(module)
            for layer in range(n_layers):
                expected[peft_key(layer, module, "A")] = (module, (r, s.in_features))
                expected[peft_key(layer, module, "B")] = (module, (s.out_features, r))
        extra = sorted(set(t.lora.tensors) - set(expected))
        missing = [k for k in expected if k not in t.lora.tensors]
        if missing or extra:
            key = missing[0] if missing else extra[0]
            what = "lacks" if missing else "has the extra"
            raise ShapeMismatchError(
                f"{where} {what} `{key}`; the hypernetwork makes layers 0-{n_layers - 1} of {sorted(want_modules)}."
            )
        for key, (module, shape) in expected.items():
            got = tuple(t.lora.tensors[key].shape)
            if got != shape:
                raise ShapeMismatchError(
                    f"{where}: {module} `{key}` has shape {list(got)}; the hypernetwork makes {list(shape)}."
                )


# --- the trainer ---------------------------------------------------------------


class ReconTrainer(Trainer):
    """Trains `hypernet` in place to reproduce `targets` from their descriptions.

    The encoder is frozen, so every description is embedded once up front. Tasks
    and descriptions are drawn from the trainer's torch stream (`loop.TrainerRNG`).
    """

    def __init__(
        self, hypernet: TextToLoRA, encoder: TaskEncoder, targets: list[ReconTarget], settings: ReconSettings = ReconSettings()
    ) -> None:
        config = hypernet.config
        if not targets:
            raise TrainingDataError("reconstruction training needs at least one target LoRA.")
        check_reads(encoder, config.encoder)
        if config.output.zscore != settings.zscore:
            hint = (
                "build it from `with_zscore(config)`"
                if settings.zscore
                else "build it without `with_zscore`, or set `zscore=True`"
            )
            raise ConfigError(
                f"`zscore={settings.zscore}` needs a hypernetwork whose config has "
                f"`output.zscore={settings.zscore}`; {hint}."
            )
        if settings.zscore and (config.output.offset or config.output.scale != 1.0):
            raise ConfigError("z-score training needs `output.offset=False` and `output.scale=1.0`.")
        if settings.zscore and len(targets) < 2:
            raise TrainingDataError("z-score training needs at least two target LoRAs to measure a std.")
        check_targets_fit(config, targets)

        self.hypernet = hypernet
        self.tasks = [t.task for t in targets]
        self.device = next(hypernet.parameters()).device

        texts = [d for t in targets for d in t.descriptions]
        self._embeddings = encoder.encode(texts).to(self.device)  # (all descriptions, E)
        self.encoder_weights = encoder.tuned_weights  # saved with every checkpoint: the embeddings depend on them
        counts = torch.tensor([len(t.descriptions) for t in targets])
        self._desc_count, self._desc_start = counts, torch.cumsum(counts, 0) - counts
        self._targets = {
            m: tuple(torch.stack([t.lora.matrices(m)[i] for t in targets]).to(self.device) for i in (0, 1))
            for m in config.lora.target_modules
        }  # module -> (A (T, L, r, in), B (T, L, out, r))
        super().__init__(hypernet.parameters(), settings, self.device)
        if settings.zscore:
            self._write_statistics()

    @torch.no_grad()
    def _write_statistics(self) -> None:
        """Per-element mean and floored std over the tasks, into the hypernetwork's buffers; refuses a library that never varies."""
        varies = False
        for m, (A, B) in self._targets.items():
            for name, x in (("A", A), ("B", B)):
                std = x.std(0)
                getattr(self.hypernet, f"mean_{name}_{m}").copy_(x.mean(0))
                getattr(self.hypernet, f"std_{name}_{m}").copy_(std.clamp_min(self.settings.std_floor))
                varies = varies or bool((std > self.settings.std_floor).any())
        if not varies:
            raise TrainingDataError("every target LoRA is the same: z-score training has nothing to learn.")

    def l1(self, generated: dict[str, LoraWeights], tasks: torch.Tensor) -> torch.Tensor:
        """L1 to the tasks' LoRAs: (A + B) / 2 per module, averaged over modules; in z-space with `zscore`.

        The model only returns de-normalised A and B, so the z-space distance
        |z - (target - mean) / std| is computed as |A - target| / std, which is the same.
        In z-space the mean runs over the elements that vary over the library (std
        buffer above `std_floor`); a matrix with none counts zero.
        """
        total = torch.zeros((), device=self.device)
        for m, w in generated.items():
            for name, pred, target in (("A", w.A, self._targets[m][0][tasks]), ("B", w.B, self._targets[m][1][tasks])):
                if self.settings.zscore:
                    std = getattr(self.hypernet, f"std_{name}_{m}")
                    varying = std > self.settings.std_floor
                    if varying.any():
                        total = total + ((pred - target).abs() / (std + _STD_EPS))[:, varying].mean() / 2
                else:
                    total = total + F.l1_loss(pred, target) / 2
        return total / len(generated)

    def loss(self) -> torch.Tensor:
        """A fresh sample of tasks, one description each, and the L1 of their generated adapters."""
        n = len(self.tasks)
        self.hypernet.train()
        tasks = torch.randperm(n)[: min(self.settings.tasks_per_batch, n)]
        picks = self._desc_start[tasks] + (torch.rand(len(tasks)) * self._desc_count[tasks]).long()
        return self.l1(self.hypernet(self._embeddings[picks.to(self.device)]), tasks.to(self.device))

    def save_weights(self, folder: Path) -> None:
        """A plain hypernetwork checkpoint, ready for `--hypernet`."""
        save_checkpoint(self.hypernet, folder, self.encoder_weights)

    def load_weights(self, folder: Path) -> None:
        model, _ = load_checkpoint(folder, device=self.device)
        if model.config != self.hypernet.config:
            raise CheckpointError(f"`{folder}` holds a hypernetwork of another config than the one being trained.")
        self.hypernet.load_state_dict(model.state_dict())

    def state_extra(self) -> dict[str, Any]:
        return {"tasks": self.tasks}

    def check_state(self, state: dict[str, Any], folder: Path) -> None:
        if state.get("tasks") != self.tasks:
            raise CheckpointError(f"`{folder}` was trained on another task library (tasks {state.get('tasks', [])[:3]}...).")
