"""The paper's claims, reproduced at toy scale on a CPU: every arm after the base model.

Starting from the toy world's trained base model (`t2l-vllm train base`; the
shipped one by default), this trains and measures, with exact-match accuracy:

- base, no cue: `<s>input\\n`, the prompt every arm sees;
- base with the task's cue (`toy.base.ToyCues`: what the adapters must put back);
- task-specific LoRAs (one per task, held-out tasks included as an oracle);
- a multi-task LoRA on all training tasks;
- T2L by reconstruction of the training tasks' LoRAs (M variant);
- T2L by reconstruction of the training tasks' cue adapters (L variant, z-scores):
  the closed-form LoRAs that write exactly the task's cue (`toy.base.cue_adapter`),
  whose targets are additive in the task's parts;
- T2L by SFT, variants L, M and S;

on training tasks with seen descriptions, training tasks with held-out
descriptions, and held-out tasks (the paper's zero-shot claim): tasks no
hypernetwork trained on, described in wordings from templates no training
description used, and scored on inputs whose answer no training task gives, so
doing a training task instead earns nothing. A second held-out column describes
them with the wordings training tasks were seen with; a third with every one of
their family's held-out templates (unseen task x unseen template); a fourth with
the independent wordings (`toy/wordings.py`: written by hand outside the
templates, free sentences, examples only, questions, terse and verbose forms,
typos; never trained, tuned or selected on), and "train tasks, independent
wordings" scores some training tasks written that way. Controls for every T2L
arm on the training tasks: random letter strings, and another training task's
description, as the description ("wrong description" also reports how often the
answer is the *described* task's, i.e. whether the adapter follows the text);
and for the held-out tasks how often the answer is some training task's output.

The hypernetworks' training data is written to `data/` first (SFT records,
the reconstruction library's manifest): only training tasks, only their seen
descriptions (and, with `Budget.augment_variants`, rewritings of them that
change the surface and not the task, `toy/augment.py`), no cue (the cue adapters
of training tasks only); the tests check it. Every hypernetwork reads the same
encoder: MiniLM with its layers tuned first on those seen descriptions, told
only which task each names (`train/encoder_tuning.py`, `encoder/`), with the
last `Budget.encoder_validation_templates` seen templates of every task kept out
of the tuning as its validation split by template; `--encoder-tuning-steps 0`
reads MiniLM as published, the paper's recipe.

Writes `table.json`, `adapters.png` (generated adapters projected to 2-D by PCA,
coloured by task family), the trained LoRAs and hypernetworks, and prints the table.

The arms are independent jobs (one per task LoRA, one per other arm; the
reconstruction of task LoRAs waits for them), trained and scored in `--workers`
processes that share the cores. Each job's randomness is its own (seeded
trainers, greedy scoring), so the figures do not depend on the order the jobs
run in; the threads per worker change only how sums round (which a long
training carries along). Many processes of one thread beat one process of many
here: the toy model's steps are too small for threads to share (a task LoRA's
step takes about the same time on one thread as on two).

    python -m t2l_vllm.toy.reproduction [--base DIR] [--out DIR] [--scale 1.0] [--workers N]

`--scale` multiplies every training step count and the examples per task (0.05 for a smoke run).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import queue
import random
import string
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from t2l_vllm.encoder import TaskEncoder
from t2l_vllm.hypernet.checkpoint import load_checkpoint, load_config, save_checkpoint
from t2l_vllm.encoder import load_task_encoder
from t2l_vllm.hypernet.config import EncoderSettings, HypernetConfig, LoraSettings
from t2l_vllm.hypernet.model import TextToLoRA, build_hypernet
from t2l_vllm.hypernet.shapes import load_base_shapes
from t2l_vllm.toy.base import ToyCues, bos_reader, cue_adapter, greedy_answers, prompt_text
from t2l_vllm.toy import augment
from t2l_vllm.toy.wordings import DEV, INDEPENDENT, Wording, by_task, style_of
from t2l_vllm.toy.world import (
    HELDOUT_TASKS, TASKS, TRAIN_TASKS, make_examples, random_input, split_descriptions, telling_inputs, write_jsonl,
)
from t2l_vllm.train.data import SFTRecord, load_sft_records
from t2l_vllm.train.encoder_tuning import EncoderTuner, EncoderTuningSettings, descriptions_by_task
from t2l_vllm.train.recon import ReconSettings, ReconTrainer, load_recon_library, with_zscore
from t2l_vllm.strength import StrengthRecord, write_record
from t2l_vllm.train.sft import SFTSettings, SFTTrainer
from t2l_vllm.train.sources import HypernetSource, SingleLoRA

Weights = dict[str, tuple[torch.Tensor, torch.Tensor]]
COLUMNS = (
    "train tasks, seen descriptions",
    "train tasks, held-out descriptions",
    "held-out tasks",
    "held-out tasks, training wordings",
    "held-out tasks, unseen templates",
    "held-out tasks, independent wordings",
    "train tasks, independent wordings",
)
CONTROLS = (
    "random description",
    "held-out tasks, random description",
    "wrong description",
    "wrong description: answers the described task",
    "held-out tasks: answers a training task's output",
)


@dataclass(frozen=True)
class Budget:
    """Training steps per arm (batch 32 throughout); sized to fit 45 minutes on this machine's 2 cores, one worker each."""

    task_lora_steps: int = 150
    multitask_lora_steps: int = 1500
    recon_steps: int = 3000
    # The reference draws 4 tasks a step from its 479. With the toy world's 40, 4 a step fitted
    # the tasks as clusters: on cue adapters, 32 a step took training tasks with held-out
    # descriptions from 0.63 to 0.78 and held-out tasks from 0.07 to 0.22 (one run each).
    recon_tasks_per_batch: int = 32
    sft_steps: int = 4000
    # The encoder's layers tuned on the training tasks' seen descriptions before any hypernetwork
    # trains (`train/encoder_tuning.py`); 0 steps: MiniLM as published, the paper's recipe. All six
    # layers: in scratch runs of SFT L, tuning the whole encoder gave 0.55 and 0.51 on held-out tasks
    # (seeds 0, 1), its top two 0.50 (seed 0).
    encoder_tuning_steps: int = EncoderTuningSettings.steps
    encoder_tuning_layers: int = 6
    # The last N seen templates (descriptions) of every training task are not drawn by the encoder tuning:
    # its validation split by template (the hypernetworks still train on them).
    encoder_validation_templates: int = 3
    encoder_shared_positions: bool = False  # `EncoderTuningSettings.shared_positions`
    encoder_augment: float = 0.0  # probability of each `toy.augment` rewriting of a description the tuning draws; 0: none
    augment_variants: int = 0  # rewritings (`toy.augment.variants`) of every seen description added to the SFT data
    batch_size: int = 32
    lora_lr: float = 1e-2
    sft_lr: float = 1e-4
    recon_lr: float = 1e-3
    examples_per_task: int = 300
    eval_inputs: int = 16
    eval_descriptions: int = 3

    def scaled(self, factor: float) -> "Budget":
        """Every step count and the training examples per task multiplied by `factor` (at least 1 and 8)."""
        steps = {k: max(1, round(getattr(self, k) * factor)) for k in ("task_lora_steps", "multitask_lora_steps", "recon_steps", "sft_steps", "encoder_tuning_steps")}
        return Budget(**{**asdict(self), **steps, "examples_per_task": max(8, round(self.examples_per_task * factor))})


LORA = LoraSettings(rank=8, alpha=16.0, use_rslora=True, target_modules=("q_proj", "v_proj"))


class Bench:
    """Holds the base model, the hypernetworks' training data and the fixed evaluation rows every arm is scored on."""

    def __init__(self, base_dir: str, out: Path, budget: Budget, seed: int = 0) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.base_dir, self.out, self.budget = base_dir, out, budget
        self.model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(base_dir)
        self.cues = ToyCues.load(base_dir)
        self.shapes = load_base_shapes(base_dir)
        rng = random.Random(seed + 1000)
        # training tasks: random inputs; held-out tasks: inputs whose answer no training task gives
        self.inputs = {t: [random_input(rng) for _ in range(budget.eval_inputs)] for t in TRAIN_TASKS}
        self.inputs |= {t: telling_inputs(t, TRAIN_TASKS, budget.eval_inputs, rng) for t in HELDOUT_TASKS}
        n = budget.eval_descriptions
        self.seen = {t: split_descriptions(TASKS[t])[0][:n] for t in TRAIN_TASKS}
        self.heldout_desc = {t: split_descriptions(TASKS[t])[1][:n] for t in TRAIN_TASKS}
        self.heldout_task = {t: split_descriptions(TASKS[t])[1][:n] for t in HELDOUT_TASKS}
        self.heldout_task_seen_wording = {t: split_descriptions(TASKS[t])[0][:n] for t in HELDOUT_TASKS}
        self.heldout_task_unseen_templates = {t: split_descriptions(TASKS[t])[1] for t in HELDOUT_TASKS}  # all of them
        self.independent, self.dev = by_task(INDEPENDENT), by_task(DEV)
        letters = string.ascii_lowercase + "     "
        self.random_desc = {t: tuple("".join(rng.choice(letters) for _ in range(len(d))).strip() or "x" for d in descs)
                            for t, descs in (*self.seen.items(), *self.heldout_task.items())}
        # another training task's seen descriptions: the next task in a fixed rotation
        self.wrong_task = {t: TRAIN_TASKS[(i + 1) % len(TRAIN_TASKS)] for i, t in enumerate(TRAIN_TASKS)}
        self.seed, self.data = seed, out / "data"
        self._embeddings: dict[str, torch.Tensor] = {}  # the encoder is frozen in training: each text is embedded once
        self.strength: dict[str, StrengthRecord] = {}  # SFT variant -> the strength record its trainer measured
        self.encoder_validation: list[tuple[int, float]] = []  # (step, nearest-task accuracy) of the encoder tuning

    @cached_property
    def described(self) -> dict[str, dict[str, Sequence[str]]]:
        """The table's exact-match columns -> the descriptions each of their tasks is scored under."""
        return dict(zip(COLUMNS, (self.seen, self.heldout_desc, self.heldout_task, self.heldout_task_seen_wording,
                                  self.heldout_task_unseen_templates, self.independent, self.dev), strict=True))

    @cached_property
    def encoder(self) -> TaskEncoder:
        """What every hypernetwork here reads: MiniLM with its top layers tuned to the training tasks
        (`encoder/`, tuned on first use), or as published when the budget tunes none."""
        if not self.budget.encoder_tuning_steps:
            return TaskEncoder(EncoderSettings())
        folder = self.out / "encoder"
        if not (folder / "config.json").is_file():
            self.tune_encoder()
        return load_task_encoder(folder, load_config(folder)[0])

    def tuning_descriptions(self) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
        """(tuned, validation): every training task's seen descriptions, the last `encoder_validation_templates`
        of them kept apart as the tuning's validation split (for rendered tasks, the same templates for every task)."""
        n = self.budget.encoder_validation_templates
        seen = {t: list(split_descriptions(TASKS[t])[0]) for t in TRAIN_TASKS}
        return {t: d[: len(d) - n] for t, d in seen.items()}, {t: d[len(d) - n :] for t, d in seen.items() if n}

    def tune_encoder(self) -> tuple[float, list[tuple[int, float]]]:
        """Tunes the encoder on the SFT data's tasks and their seen descriptions (no held-out task, no held-out
        template), less its validation split, and writes `encoder/`, an untrained hypernetwork's checkpoint that
        reads it; returns the seconds and the validation accuracy through the tuning."""
        if not (self.data / "train.jsonl").is_file():
            self.write_training_data()
        b = self.budget
        hypernet = build_hypernet(HypernetConfig(base=self.shapes, variant="L", lora=LORA, encoder=EncoderSettings()))
        tuned, validation = self.tuning_descriptions()
        assert set(tuned) == set(descriptions_by_task(self.train_records))  # the SFT data's tasks, no other
        settings = EncoderTuningSettings(steps=b.encoder_tuning_steps, layers=b.encoder_tuning_layers, seed=self.seed,
                                         shared_positions=b.encoder_shared_positions, log_every=max(1, b.encoder_tuning_steps // 6))
        rewrite = (lambda task, text, rng: augment.augment(task, text, rng, p=b.encoder_augment)) if b.encoder_augment else None
        tuner = EncoderTuner(hypernet, tuned, settings, validation=validation, augment=rewrite)
        history = [(0, tuner.evaluate())] if validation else []
        losses, seconds = timed(tuner.train, self.out / "encoder")
        history += tuner.validation_history
        print(f"  encoder tuning: {len(losses)} steps, loss {losses[0]:.3f} -> {sum(losses[-20:]) / min(20, len(losses)):.3f}, "
              f"validation {history[0][1] if history else float('nan'):.3f} -> {history[-1][1] if history else float('nan'):.3f}, {seconds:.0f} s", flush=True)
        return seconds, history

    def write_training_data(self) -> None:
        """`data/`: the tasks' SFT examples and the two reconstruction libraries' manifests (training tasks only)."""
        b = self.budget
        records = make_examples(TRAIN_TASKS, b.examples_per_task, seed=self.seed)
        if b.augment_variants:
            rewritten = {t: [v for d in split_descriptions(TASKS[t])[0] for v in augment.variants(t, d, b.augment_variants, self.seed)]
                         for t in TRAIN_TASKS}
            records = [{**r, "descriptions": r["descriptions"] + rewritten[r["task"]]} for r in records]
        write_jsonl(self.data / "train.jsonl", records)
        write_jsonl(self.data / "heldout_tasks.jsonl", make_examples(HELDOUT_TASKS, b.examples_per_task, seed=self.seed + 1))
        for library, folder in (("recon_library.jsonl", "loras"), ("cue_library.jsonl", "cue_loras")):
            write_jsonl(self.data / library, [
                {"task": t, "lora": f"../{folder}/{t}", "descriptions": list(split_descriptions(TASKS[t])[0])} for t in TRAIN_TASKS
            ])

    @cached_property
    def train_records(self) -> list[SFTRecord]:
        return load_sft_records(self.data / "train.jsonl")

    @cached_property
    def heldout_records(self) -> list[SFTRecord]:
        """The held-out tasks' examples: only their task-specific (oracle) LoRAs train on them."""
        return load_sft_records(self.data / "heldout_tasks.jsonl")

    # --- scoring -------------------------------------------------------------------
    @torch.no_grad()
    def answers(self, rows: Sequence[tuple[str, str]], loras: Weights | None, cued: bool = False) -> list[str]:
        """Greedy answers to (task, input) rows; row n uses adapter n of `loras` (if given), or its task's cue."""
        cues = self.cues([task for task, _ in rows]) if cued else None
        return greedy_answers(self.model, self.tokenizer, [prompt_text(text) for _, text in rows], max_new_tokens=28,
                              loras=loras, scaling=LORA.scaling, cues=cues)

    def score(self, rows: Sequence[tuple[str, str]], loras: Weights | None, cued: bool = False) -> float:
        """Exact match of the answers to the rows' own tasks."""
        return exact(self.answers(rows, loras, cued), rows, [task for task, _ in rows])

    def task_rows(self, tasks: Sequence[str]) -> list[tuple[str, str]]:
        return [(t, x) for t in tasks for x in self.inputs[t]]

    def described_rows(self, descriptions: dict[str, Sequence[str]]) -> tuple[list[tuple[str, str]], list[str]]:
        """(task, input) rows and the description each row's adapter comes from."""
        rows, texts = [], []
        for task, descs in descriptions.items():
            for d in descs:
                rows += [(task, x) for x in self.inputs[task]]
                texts += [d] * len(self.inputs[task])
        return rows, texts

    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """(N, encoder dim) embeddings of `texts`, each text encoded once per benchmark (the encoder is frozen)."""
        new = sorted(set(texts) - self._embeddings.keys())
        if new:
            self._embeddings |= dict(zip(new, self.encoder.encode(new)))
        return torch.stack([self._embeddings[text] for text in texts])

    @torch.no_grad()
    def generated(self, hypernet: TextToLoRA, texts: Sequence[str]) -> Weights:
        hypernet.eval()
        unique = sorted(set(texts))
        position = {text: i for i, text in enumerate(unique)}
        out = hypernet(self.embed(unique))
        index = torch.tensor([position[t] for t in texts])
        return {m: (w.A[index], w.B[index]) for m, w in out.items()}

    def described_answers(self, hypernet: TextToLoRA, descriptions: dict[str, Sequence[str]]) -> tuple[list[str], list[tuple[str, str]]]:
        """The hypernetwork's adapters' answers to each task's inputs under each of its descriptions, and the rows."""
        rows, texts = self.described_rows(descriptions)
        return self.answers(rows, self.generated(hypernet, texts)), rows

    def score_hypernet(self, hypernet: TextToLoRA) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
        """The table's row for a hypernetwork, and its breakdowns: the main held-out column and the independent
        wordings task by task, the independent wordings (of held-out and of training tasks) style by style."""
        result, breakdown = {}, {}
        for column, descs in self.described.items():
            answers, rows = self.described_answers(hypernet, descs)
            result[column] = exact(answers, rows, [task for task, _ in rows])
            if column == COLUMNS[2]:
                breakdown[column] = by_heldout_task(answers, rows)
                # does a held-out task's adapter do a training task instead? (never right: the inputs tell them apart)
                result[CONTROLS[4]] = sum(training_task_answered(a, x) is not None for a, (_, x) in zip(answers, rows)) / len(rows)
            if column == COLUMNS[5]:
                breakdown[column] = by_heldout_task(answers, rows)
                breakdown[f"{column}, by style"] = self.by_style(answers, rows, descs, INDEPENDENT)
            if column == COLUMNS[6]:
                breakdown[f"{column}, by style"] = self.by_style(answers, rows, descs, DEV)
        for control, tasks in zip(CONTROLS[:2], (TRAIN_TASKS, HELDOUT_TASKS)):
            rows, texts = self.described_rows({t: self.random_desc[t] for t in tasks})
            result[control] = self.score(rows, self.generated(hypernet, texts))
        rows, texts = self.described_rows({t: self.seen[self.wrong_task[t]] for t in TRAIN_TASKS})
        answers = self.answers(rows, self.generated(hypernet, texts))
        result[CONTROLS[2]] = exact(answers, rows, [t for t, _ in rows])
        result[CONTROLS[3]] = exact(answers, rows, [self.wrong_task[t] for t, _ in rows])  # the task the description names
        return result, breakdown

    def by_style(self, answers: Sequence[str], rows: Sequence[tuple[str, str]], descriptions: dict[str, Sequence[str]],
                 wordings: tuple[Wording, ...]) -> dict[str, float]:
        """Exact match per style of `wordings` over rows laid out by `described_rows(descriptions)`."""
        style = style_of(wordings)
        _, texts = self.described_rows(descriptions)
        right: dict[str, list[bool]] = {}
        for answer, (task, text), description in zip(answers, rows, texts):
            right.setdefault(style[(task, description)], []).append(answer == TASKS[task].fn(text))
        return {s: sum(v) / len(v) for s, v in right.items()}

    # --- training ------------------------------------------------------------------
    def sft_trainer(self, source, records, steps: int, lr: float) -> SFTTrainer:
        """The benchmark's SFT recipe over `steps` (every arm trained through the base model uses it)."""
        settings = SFTSettings(steps=steps, batch_size=self.budget.batch_size, lr=lr, warmup_frac=0.05, max_length=64)
        return SFTTrainer(source, self.model, self.tokenizer, records, settings)

    def sft(self, source, records, steps: int, lr: float, log_name: str) -> SFTTrainer:
        """Trains `source` by the benchmark's recipe; returns its trainer."""
        trainer = self.sft_trainer(source, records, steps, lr)
        losses, seconds = timed(trainer.train)
        print(f"  {log_name}: {steps} steps, loss {sum(losses[:20]) / min(20, len(losses)):.3f} -> {sum(losses[-20:]) / min(20, len(losses)):.3f}, {seconds:.0f} s", flush=True)
        return trainer

    def train_lora(self, records, steps: int, name: str) -> SingleLoRA:
        """A plain LoRA on `records`, saved as a PEFT folder under `loras/`."""
        lora = SingleLoRA(self.shapes, LORA, seed=0)
        self.sft(lora, records, steps, self.budget.lora_lr, name)
        lora.save(self.out / "loras" / name)
        return lora

    def sft_hypernet(self, variant: str) -> TextToLoRA:
        """T2L trained by SFT on the training tasks' examples, each with one of its task's seen descriptions."""
        hypernet, records = self.new_hypernet(variant), self.train_records
        source = HypernetSource(hypernet, self.encoder, [d for r in records for d in r.descriptions])
        trainer = self.sft(source, records, self.budget.sft_steps, self.budget.sft_lr, f"sft-{variant}")
        self.strength[variant] = trainer.strength_record()  # what `t2l-vllm check` holds its served adapters against
        return hypernet

    def write_cue_adapters(self) -> None:
        """The training tasks' cue adapters as PEFT folders under `cue_loras/` (the cue library's targets)."""
        reader = bos_reader(self.model, self.tokenizer)
        with torch.no_grad():
            for task in TRAIN_TASKS:
                cue_adapter(task, self.cues([task])[0], reader, self.shapes, LORA).save_peft(self.out / "cue_loras" / task)

    def recon(self, variant: str, library: str, zscore: bool) -> TextToLoRA:
        """A hypernetwork fitted to `data/<library>`."""
        hypernet, b = self.new_hypernet(variant, zscore), self.budget
        settings = ReconSettings(steps=b.recon_steps, lr=b.recon_lr, tasks_per_batch=b.recon_tasks_per_batch, zscore=zscore,
                                 log_every=max(1, b.recon_steps // 5))
        ReconTrainer(hypernet, self.encoder, load_recon_library(self.data / library), settings).train()
        return hypernet

    def cue_recon(self) -> TextToLoRA:
        """T2L (L, z-scores) fitted to the training tasks' cue adapters, written first."""
        self.write_cue_adapters()
        return self.recon("L", "cue_library.jsonl", zscore=True)

    def new_hypernet(self, variant: str, zscore: bool = False, seed: int = 0, **changes) -> TextToLoRA:
        """A fresh hypernetwork for the base at the benchmark's LoRA settings; `changes` are other `HypernetConfig` fields."""
        config = HypernetConfig(base=self.shapes, variant=variant, lora=LORA, encoder=self.encoder.settings, **changes)
        return build_hypernet(with_zscore(config) if zscore else config, seed=seed)


def training_task_answered(answer: str, text: str) -> str | None:
    """The first training task, in the world's order, whose output on `text` is `answer`, or None."""
    return next((t for t in TRAIN_TASKS if answer == TASKS[t].fn(text)), None)


def exact(answers: Sequence[str], rows: Sequence[tuple[str, str]], goals: Sequence[str]) -> float:
    """Fraction of answers equal to the output of task goals[n] on row n's input."""
    return sum(a == TASKS[goal].fn(text) for a, (_, text), goal in zip(answers, rows, goals)) / len(rows)


def by_heldout_task(answers: Sequence[str], rows: Sequence[tuple[str, str]]) -> dict[str, float]:
    """Exact match per held-out task, over the rows of that task."""
    return {t: exact(*zip(*[(a, r, t) for a, r in zip(answers, rows) if r[0] == t])) for t in HELDOUT_TASKS}


def lora_weights(lora: SingleLoRA, n: int) -> Weights:
    return {m: (A.detach(), B.detach()) for m, (A, B) in lora.adapters([""] * n).items()}


# --- the arms as jobs, run in worker processes --------------------------------------

_worker_bench: Bench | None = None  # a worker's own `Bench`, made once by `start_worker`

HYPERNET_ARMS = {  # the table's row -> (the folder under `hypernets/`, the `Bench` method that trains it, its arguments)
    "T2L recon (M)": ("recon-M", "recon", ("M", "recon_library.jsonl", False)),
    "T2L recon (L), cue adapters": ("recon-cue-L", "cue_recon", ()),
    "T2L SFT (L)": ("sft-L", "sft_hypernet", ("L",)),
    "T2L SFT (M)": ("sft-M", "sft_hypernet", ("M",)),
    "T2L SFT (S)": ("sft-S", "sft_hypernet", ("S",)),
}


def timed(fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    """`fn(*args)` and the seconds it took."""
    start = time.monotonic()
    result = fn(*args)
    return result, time.monotonic() - start


def description_free_row(train: float, heldout: float) -> dict[str, float]:
    """The columns of an arm that reads no description: each kind of description scores as the task does
    (training tasks' independent wordings as all training tasks do)."""
    return {COLUMNS[0]: train, COLUMNS[1]: train, COLUMNS[2]: heldout, COLUMNS[3]: heldout, COLUMNS[4]: heldout,
            COLUMNS[5]: heldout, COLUMNS[6]: train}


def start_worker(base_dir: str, out: Path, budget: Budget, seed: int, threads: int) -> None:
    """A worker's set-up: its share of the cores and its own `Bench` over the data the main process wrote."""
    global _worker_bench
    torch.set_num_threads(threads)
    _worker_bench = Bench(base_dir, out, budget, seed)


def untuned_rows() -> dict[str, dict[str, float]]:
    """The base model's rows: without a cue (what every arm starts from) and with each task's cue."""
    bench = _worker_bench
    rows = {}
    for arm, cued in (("base, no cue", False), ("base with the task's cue", True)):
        train, heldout = (bench.score(bench.task_rows(tasks), None, cued=cued) for tasks in (TRAIN_TASKS, HELDOUT_TASKS))
        rows[arm] = description_free_row(train, heldout)
    return rows


def encoder_tuning_job() -> tuple[float | None, list[tuple[int, float]]]:
    """Tunes the encoder every hypernetwork arm reads (none when the budget says 0 steps): its seconds and
    its validation accuracy through the tuning. An encoder already tuned in the output folder (an earlier
    run's, with `--arms`) is read as it is: its seconds and validation from `encoder/tuning.json`, if written."""
    bench = _worker_bench
    if not bench.budget.encoder_tuning_steps:
        return 0.0, []
    folder = bench.out / "encoder"
    if (folder / "config.json").is_file():
        print(f"  encoder tuning: reusing the encoder tuned in {folder}", flush=True)
        record = folder / "tuning.json"
        if not record.is_file():
            return None, []
        tuning = json.loads(record.read_text())
        return tuning["seconds"], [tuple(step) for step in tuning["validation"]]
    seconds, history = bench.tune_encoder()
    (folder / "tuning.json").write_text(json.dumps({"seconds": seconds, "validation": history}) + "\n")
    return seconds, history


def task_lora_arm(task: str) -> tuple[float, float]:
    """One task's own LoRA, trained on its examples and scored on its inputs: (exact match, training seconds)."""
    bench = _worker_bench
    records = [r for r in (*bench.train_records, *bench.heldout_records) if r.task == task]
    lora, seconds = timed(bench.train_lora, records, bench.budget.task_lora_steps, task)
    return bench.score(bench.task_rows([task]), lora_weights(lora, len(bench.inputs[task]))), seconds


def multitask_arm() -> tuple[dict[str, float], float]:
    """One LoRA on every training task's examples: its row and its training seconds."""
    bench = _worker_bench
    lora, seconds = timed(bench.train_lora, bench.train_records, bench.budget.multitask_lora_steps, "multitask")
    train, heldout = (bench.score(rows, lora_weights(lora, len(rows))) for rows in (bench.task_rows(TRAIN_TASKS), bench.task_rows(HELDOUT_TASKS)))
    return description_free_row(train, heldout), seconds


def hypernet_arm(arm: str) -> tuple[dict[str, float], dict[str, dict[str, float]], float]:
    """Trains the hypernetwork of `arm`, saves it (an SFT arm with its strength record) and scores it: its row,
    its breakdowns (`Bench.score_hypernet`), its training seconds."""
    bench = _worker_bench
    folder, method, args = HYPERNET_ARMS[arm]
    hypernet, seconds = timed(getattr(bench, method), *args)
    save_checkpoint(hypernet, bench.out / "hypernets" / folder, bench.encoder.tuned_weights)
    if method == "sft_hypernet":
        write_record(bench.out / "hypernets" / folder, bench.strength[args[0]])
    row, breakdown = bench.score_hypernet(hypernet)
    return row, breakdown, seconds


@dataclass(frozen=True)
class Job:
    """`fn(*args)`, run in a worker once the jobs named in `after` are done."""

    name: str
    fn: Callable[..., Any]
    args: tuple = ()
    after: tuple[str, ...] = ()


def jobs_in_order(arms: Sequence[str] | None = None) -> list[Job]:
    """Every arm as a job: the longest (SFT S) first, then the task LoRAs that recon M waits for, then
    the other long arms, so that the last jobs to finish are short ones. With `arms` (rows of
    `HYPERNET_ARMS`), only those hypernetworks, the jobs they wait for and the base model's rows."""
    jobs = _every_job()
    if arms is None:
        return jobs
    after = {job.name: job.after for job in jobs}
    needed, frontier = {"base model", *arms}, [*arms]
    while frontier:
        for name in after[frontier.pop()]:
            if name not in needed:
                needed.add(name)
                frontier.append(name)
    return [job for job in jobs if job.name in needed]


def _every_job() -> list[Job]:
    loras = [Job(f"task LoRA {t}", task_lora_arm, (t,)) for t in (*TRAIN_TASKS, *HELDOUT_TASKS)]
    tuned = ("encoder tuning",)  # every hypernetwork reads the tuned encoder
    return [
        Job("encoder tuning", encoder_tuning_job),
        Job("T2L SFT (S)", hypernet_arm, ("T2L SFT (S)",), after=tuned),
        *loras,
        Job("T2L recon (M)", hypernet_arm, ("T2L recon (M)",), after=(*tuned, *(j.name for j in loras))),  # fits the task LoRAs
        Job("T2L SFT (M)", hypernet_arm, ("T2L SFT (M)",), after=tuned),
        Job("T2L SFT (L)", hypernet_arm, ("T2L SFT (L)",), after=tuned),
        Job("T2L recon (L), cue adapters", hypernet_arm, ("T2L recon (L), cue adapters",), after=tuned),
        Job("multi-task LoRA", multitask_arm),
        Job("base model", untuned_rows),
    ]


def run_jobs(jobs: Sequence[Job], pool: Any, workers: int) -> dict[str, Any]:
    """Each job's result by name. At most `workers` run at once, so the next free worker takes the
    earliest job in `jobs` whose `after` are done; the first job to fail stops the run with its error."""
    finished: queue.SimpleQueue = queue.SimpleQueue()
    results: dict[str, Any] = {}
    waiting, running = list(jobs), 0
    while waiting or running:
        for job in [j for j in waiting if set(j.after) <= results.keys()][: workers - running]:
            waiting.remove(job)
            running += 1
            pool.apply_async(job.fn, job.args, callback=lambda result, name=job.name: finished.put((name, result, None)),
                             error_callback=lambda error, name=job.name: finished.put((name, None, error)))
        if not running:
            raise ValueError(f"jobs wait for jobs that never run: {[j.name for j in waiting]}")
        name, result, error = finished.get()
        running -= 1
        if error is not None:
            raise RuntimeError(f"the job `{name}` failed") from error
        results[name] = result
        print(f"done: {name} ({len(results)}/{len(jobs)})", flush=True)
    return results


def run(bench: Bench, workers: int, arms: Sequence[str] | None = None) -> dict:
    """Writes the training data, runs every arm (or the hypernetworks `arms` only) in `workers` processes and
    gathers the table, the plot and the timings."""
    bench.write_training_data()
    threads = max(1, len(os.sched_getaffinity(0)) // workers)
    context = multiprocessing.get_context("spawn")  # a fork would copy the parent's torch threads mid-state
    pool = context.Pool(workers, start_worker, (bench.base_dir, bench.out, bench.budget, bench.seed, threads))
    try:
        results = run_jobs(jobs_in_order(arms), pool, workers)
        pool.close()
    except BaseException:
        pool.terminate()  # a failed job (or Ctrl-C) stops the jobs still running
        raise
    finally:
        pool.join()

    table = dict(results["base model"])
    tuning_seconds, validation = results["encoder tuning"]
    timings: dict[str, float | None] = {"encoder tuning": tuning_seconds}
    if f"task LoRA {TRAIN_TASKS[0]}" in results:  # they run together: every arm, or recon M's inputs
        loras = {t: results[f"task LoRA {t}"] for t in (*TRAIN_TASKS, *HELDOUT_TASKS)}
        train, heldout = (sum(loras[t][0] for t in tasks) / len(tasks) for tasks in (TRAIN_TASKS, HELDOUT_TASKS))
        table["task-specific LoRAs (one per task)"] = description_free_row(train, heldout)
        timings["task-specific LoRAs"] = sum(seconds for _, seconds in loras.values())
    if "multi-task LoRA" in results:
        table["multi-task LoRA"], timings["multi-task LoRA"] = results["multi-task LoRA"]
    ran = [arm for arm in HYPERNET_ARMS if arm in results]
    breakdowns: dict[str, dict[str, dict[str, float]]] = {}
    for arm in ran:
        table[arm], breakdowns[arm], timings[arm] = results[arm]
    hypernets = {arm: load_checkpoint(bench.out / "hypernets" / HYPERNET_ARMS[arm][0])[0] for arm in ran}
    plot_adapters(bench, hypernets, bench.out / "adapters.png")
    b = bench.budget

    def breakdown(key: str) -> dict[str, dict[str, float]]:
        return {arm: breakdowns[arm][key] for arm in ran}

    return {"table": table, "heldout_tasks_by_task": breakdown(COLUMNS[2]),
            "independent_wordings_by_task": breakdown(COLUMNS[5]),
            "independent_wordings_by_style": breakdown(f"{COLUMNS[5]}, by style"),
            "train_tasks_independent_wordings_by_style": breakdown(f"{COLUMNS[6]}, by style"),
            "encoder_tuning_validation": {"templates": b.encoder_validation_templates, "nearest_task_accuracy_by_step": validation},
            "train_seconds": timings, "workers": workers, "threads_per_worker": threads, "budget": asdict(b), "base": bench.base_dir,
            "eval": {"inputs_per_task": b.eval_inputs, "descriptions_per_task": b.eval_descriptions,
                     "train_tasks": list(TRAIN_TASKS), "heldout_tasks": list(HELDOUT_TASKS),
                     "independent_wordings": len(INDEPENDENT), "train_tasks_independent_wordings": len(DEV)}}


def plot_adapters(bench: Bench, hypernets: dict[str, TextToLoRA], path: Path) -> None:
    """Every description's generated adapter (A and B flattened), PCA to 2-D, one panel per arm, coloured by family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    texts, families, kinds = [], [], []
    for name, task in TASKS.items():
        seen, held = split_descriptions(task)
        for d in (*seen, *held):
            texts.append(d)
            families.append(task.family)
            kinds.append("held-out task" if name in HELDOUT_TASKS else ("seen description" if d in seen else "held-out description"))
    family_names = sorted(set(families))
    colours = dict(zip(family_names, plt.get_cmap("tab10").colors))
    markers = {"seen description": ("o", 10), "held-out description": ("x", 14), "held-out task": ("^", 30)}
    fig, axes = plt.subplots(1, len(hypernets), figsize=(5 * len(hypernets), 5.4), squeeze=False)
    for ax, (name, hypernet) in zip(axes[0], hypernets.items()):
        weights = bench.generated(hypernet, texts)
        flat = torch.cat([torch.cat([A.flatten(1), B.flatten(1)], 1) for A, B in weights.values()], 1)
        flat = flat - flat.mean(0)
        _, _, v = torch.linalg.svd(flat, full_matrices=False)
        xy = (flat @ v[:2].T).numpy()
        for family in family_names:
            for kind, (marker, size) in markers.items():
                idx = [j for j, (f, k) in enumerate(zip(families, kinds)) if f == family and k == kind]
                if idx:
                    edge = {"edgecolors": "black", "linewidths": 0.5} if kind == "held-out task" else {}
                    ax.scatter(xy[idx, 0], xy[idx, 1], c=[colours[family]], marker=marker, s=size, alpha=0.8,
                               label=family if kind == "seen description" else None, **edge)
        ax.set_title(name)
        ax.set_xticks([])
        ax.set_yticks([])
    handles, names = axes[0][-1].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=len(family_names), fontsize=8, markerscale=2)
    fig.suptitle("Generated adapters by task family, PCA to 2-D (o seen description, x held-out description, ^ held-out task)")
    fig.tight_layout(rect=(0, 0.07, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_table(table: dict[str, dict[str, float]]) -> None:
    columns = [*COLUMNS, *CONTROLS]
    short = ["train/seen", "train/held-out desc", "held-out tasks", "held-out tasks, training wordings", "held-out tasks, unseen templates",
             "held-out tasks, independent wordings", "train tasks, independent wordings", "random desc",
             "held-out tasks, random desc", "wrong desc", "wrong desc -> described", "held-out -> a training task"]
    print("| arm | " + " | ".join(short) + " |")
    print("|---|" + "---|" * len(short))
    for arm, row in table.items():
        print(f"| {arm} | " + " | ".join(f"{row[c]:.3f}" if c in row else "" for c in columns) + " |")


def add_bench_options(parser: argparse.ArgumentParser) -> None:
    """The options of every benchmark built on `Bench`: the base model and the size of the evaluation."""
    parser.add_argument("--base", help="toy base model folder (default: the embedded default's base model)")
    parser.add_argument("--eval-inputs", type=int, default=Budget.eval_inputs, help="inputs per task and description (default: %(default)s)")
    parser.add_argument("--eval-descriptions", type=int, default=Budget.eval_descriptions, help="descriptions per task (default: %(default)s)")
    parser.add_argument("--encoder-tuning-steps", type=int, default=Budget.encoder_tuning_steps,
                        help="steps tuning the encoder the hypernetworks read; 0: MiniLM as published (default: %(default)s)")


def parse_bench_options(parser: argparse.ArgumentParser, argv: Sequence[str] | None, positive: Sequence[str]) -> argparse.Namespace:
    """`argv` parsed; a value of `positive` or of the evaluation's size that is given and not positive is
    refused, and a missing `--base` becomes the embedded default's."""
    args = parser.parse_args(argv)
    for name in (*positive, "eval_inputs", "eval_descriptions"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {value}")
    if args.encoder_tuning_steps < 0:
        parser.error(f"--encoder-tuning-steps must be 0 or more, got {args.encoder_tuning_steps}")
    if args.base is None:
        from t2l_vllm.default_model import default_paths

        args.base = str(default_paths().base_model)
    return args


def options_budget(args: argparse.Namespace) -> Budget:
    """The benchmark's budget at the evaluation size that `parse_bench_options` read."""
    return Budget(eval_inputs=args.eval_inputs, eval_descriptions=args.eval_descriptions, encoder_tuning_steps=args.encoder_tuning_steps)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m t2l_vllm.toy.reproduction", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_bench_options(parser)
    parser.add_argument("--out", default="benchmarks/results/toy_reproduction", help="folder for the table, plot and trained weights")
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies every step count (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the training examples and the evaluation's inputs")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)),
                        help="processes that train and score the arms, sharing the cores (default: one per core, %(default)s)")
    parser.add_argument("--arms", nargs="+", choices=list(HYPERNET_ARMS), metavar="ARM",
                        help="train and score only these hypernetworks (with the jobs they wait for, and the base model's rows), reading the encoder "
                             "already tuned in --out if there is one; choices: %(choices)s")
    parser.add_argument("--augment-variants", type=int, default=Budget.augment_variants,
                        help="rewritings (toy/augment.py) of every seen description added to the SFT data (default: %(default)s)")
    parser.add_argument("--encoder-augment", type=float, default=Budget.encoder_augment,
                        help="probability of each rewriting of a description the encoder tuning draws; 0: none (default: %(default)s)")
    args = parse_bench_options(parser, argv, positive=("scale", "workers"))
    if args.augment_variants < 0 or not 0.0 <= args.encoder_augment <= 1.0:
        parser.error("--augment-variants must be 0 or more and --encoder-augment between 0 and 1")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    budget = replace(options_budget(args), augment_variants=args.augment_variants,
                     encoder_augment=args.encoder_augment).scaled(args.scale)
    bench = Bench(args.base, out, budget, seed=args.seed)
    report = run(bench, args.workers, args.arms)
    report["total_seconds"] = time.monotonic() - start
    (out / "table.json").write_text(json.dumps(report, indent=2) + "\n")
    print_table(report["table"])
    print(f"total {report['total_seconds'] / 60:.1f} min; wrote {out / 'table.json'} and {out / 'adapters.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
