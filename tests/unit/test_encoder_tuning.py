"""Tuning the task encoder (`train.encoder_tuning`) and keeping the tuned layers in the hypernetwork's checkpoint."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from t2l_vllm.cli import main as cli
from t2l_vllm.encoder import TaskEncoder
from t2l_vllm.errors import CheckpointError, ConfigError
from t2l_vllm.generator import AdapterGenerator
from t2l_vllm.hypernet.checkpoint import ENCODER_WEIGHTS_FILE, load_checkpoint, save_checkpoint
from t2l_vllm.encoder import load_task_encoder
from t2l_vllm.hypernet.config import EncoderSettings, HypernetConfig
from t2l_vllm.hypernet.model import build_hypernet
from t2l_vllm.hypernet.shapes import load_base_shapes
from t2l_vllm.toy.world import TASKS, make_examples, split_descriptions, write_jsonl
from t2l_vllm.train.data import TrainingDataError, load_sft_records
from t2l_vllm.train.encoder_tuning import EncoderTuner, EncoderTuningSettings, descriptions_by_task



@pytest.fixture(scope="module")
def hypernet(default_paths):
    config = HypernetConfig(base=load_base_shapes(default_paths.base_model), variant="L", latent_size=16, head_in_size=32)
    return build_hypernet(config, seed=0)


@pytest.fixture(scope="module")
def descriptions():
    return {t: split_descriptions(TASKS[t])[0] for t in ("shift_forward_3", "shift_backward_3", "reverse", "uppercase", "keep_first_3", "keep_last_3")}


@pytest.fixture(scope="module")
def tuned(hypernet, descriptions, tmp_path_factory):
    """A short tuning run's checkpoint folder and its trainer."""
    tuner = EncoderTuner(hypernet, descriptions, EncoderTuningSettings(steps=12, tasks_per_batch=6, lr=2e-4, warmup_frac=0.0))
    folder = tmp_path_factory.mktemp("tuned") / "out"
    tuner.train(folder)
    return folder, tuner


def task_margin(encoder: TaskEncoder, descriptions) -> float:
    """Mean cosine of two descriptions of one task minus that of two descriptions of different tasks."""
    tasks = sorted(descriptions)
    emb = torch.nn.functional.normalize(encoder.encode([d for t in tasks for d in descriptions[t]]), dim=-1)
    owner = torch.tensor([i for i, t in enumerate(tasks) for _ in descriptions[t]])
    cos, same = emb @ emb.T, owner[:, None] == owner[None, :]
    return (cos[same & ~torch.eye(len(owner), dtype=torch.bool)].mean() - cos[~same].mean()).item()


def test_tuning_gathers_each_tasks_descriptions(hypernet, descriptions, tuned):
    folder, _ = tuned
    before = task_margin(TaskEncoder(hypernet.config.encoder), descriptions)
    after = task_margin(load_task_encoder(folder, load_checkpoint(folder)[0].config), descriptions)
    assert after > before + 0.05


def test_the_checkpoint_keeps_exactly_the_tuned_layers_and_serves_them(tuned, default_paths):
    folder, tuner = tuned
    model, digest = load_checkpoint(folder)
    assert model.config.encoder.tuned_layers == 2
    weights = load_file(str(folder / ENCODER_WEIGHTS_FILE))
    assert weights.keys() == tuner.tuned.keys() and all(".layer.4." in k or ".layer.5." in k for k in weights)
    generator = AdapterGenerator.from_checkpoint(folder)
    text = ["Shift every letter three places forward."]
    assert torch.equal(generator.encoder.encode(text), tuner.tuned_encoder().encode(text))
    assert not torch.allclose(generator.encoder.encode(text), TaskEncoder(EncoderSettings()).encode(text))
    assert generator.fingerprint == digest


def test_the_fingerprint_covers_the_tuned_layers(tuned, tmp_path):
    folder, _ = tuned
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    weights = load_file(str(copy / ENCODER_WEIGHTS_FILE))
    name = sorted(weights)[0]
    weights[name] = weights[name] + 1e-3
    save_file(weights, str(copy / ENCODER_WEIGHTS_FILE))
    with pytest.raises(CheckpointError, match="fingerprint"):
        load_checkpoint(copy)
    (copy / ENCODER_WEIGHTS_FILE).unlink()
    with pytest.raises(CheckpointError, match=ENCODER_WEIGHTS_FILE):
        load_checkpoint(copy)


def test_tuned_weights_must_fit_the_settings(tuned, hypernet):
    folder, tuner = tuned
    settings = load_checkpoint(folder)[0].config.encoder
    with pytest.raises(ConfigError, match="missing"):
        TaskEncoder(settings)
    with pytest.raises(ConfigError, match="no layer was tuned"):
        TaskEncoder(EncoderSettings(), tuned_weights=tuner.tuned_weights)
    with pytest.raises(CheckpointError, match="no tuned encoder weights"):
        save_checkpoint(load_checkpoint(folder)[0], folder.parent / "bad")
    with pytest.raises(ConfigError, match="already tuned"):
        EncoderTuner(load_checkpoint(folder)[0], {"a": ["x", "y"], "b": ["z", "w"]})


def test_an_untuned_config_keeps_its_old_form(hypernet, tuned):
    """A field added to the format stays out of a config that does not use it, so old fingerprints hold."""
    assert "tuned_layers" not in hypernet.config.to_dict()["encoder"]
    assert load_checkpoint(tuned[0])[0].config.to_dict()["encoder"]["tuned_layers"] == 2


def test_resume_takes_the_same_next_step(hypernet, descriptions, tmp_path):
    settings = EncoderTuningSettings(steps=4, tasks_per_batch=4, checkpoint_every=2)
    whole = EncoderTuner(hypernet, descriptions, settings)
    losses = whole.train(tmp_path / "whole")
    resumed = EncoderTuner(hypernet, descriptions, settings)
    assert resumed.resume(tmp_path / "whole" / "step-2") == 2
    assert resumed.train(tmp_path / "resumed") == pytest.approx(losses[2:], rel=1e-5)
    for name, p in resumed.tuned.items():
        assert torch.allclose(p, whole.tuned[name], atol=1e-6)


def test_train_encoder_then_sft_from_the_command_line(default_paths, tmp_path):
    data = tmp_path / "train.jsonl"
    write_jsonl(data, make_examples(["reverse", "uppercase", "sort_words"], 4, seed=1))
    assert sorted(descriptions_by_task(load_sft_records(data))) == ["reverse", "sort_words", "uppercase"]
    init = tmp_path / "init"
    assert cli(["init-hypernet", "--model", str(default_paths.base_model), "--variant", "L", "--latent-size", "16",
                "--head-in-size", "32", "-o", str(init)]) == 0
    assert cli(["train", "encoder", "--hypernet", str(init), "--data", str(data), "--steps", "2", "--tasks-per-batch", "3",
                "-o", str(tmp_path / "enc")]) == 0
    assert cli(["train", "sft", "--hypernet", str(tmp_path / "enc"), "--data", str(data), "--steps", "2", "--batch-size", "2",
                "-o", str(tmp_path / "sft")]) == 0
    trained, _ = load_checkpoint(tmp_path / "sft")  # SFT keeps the tuned layers it read
    assert trained.config.encoder.tuned_layers == 2
    assert load_file(str(tmp_path / "sft" / ENCODER_WEIGHTS_FILE)).keys() == load_file(str(tmp_path / "enc" / ENCODER_WEIGHTS_FILE)).keys()


def test_validation_descriptions_are_never_drawn_and_measure_nearest_task_accuracy(hypernet, descriptions):
    tuned = {t: list(d[:-3]) for t, d in descriptions.items()}
    validation = {t: list(d[-3:]) for t, d in descriptions.items()}
    tuner = EncoderTuner(hypernet, tuned, EncoderTuningSettings(steps=2, tasks_per_batch=6, log_every=1), validation=validation)
    drawn = {d for _ in range(20) for pair in tuner.pairs()[1] for d in pair}
    assert drawn <= {d for v in tuned.values() for d in v} and drawn.isdisjoint(d for v in validation.values() for d in v)
    before = tuner.evaluate()
    assert 0.0 <= before <= 1.0
    tuner.train()
    assert [step for step, _ in tuner.validation_history] == [1, 2]
    with pytest.raises(TrainingDataError, match="also draws"):
        EncoderTuner(hypernet, tuned, validation={"reverse": [tuned["reverse"][0]]})
    with pytest.raises(TrainingDataError, match="does not draw"):
        EncoderTuner(hypernet, tuned, validation={"count_words": ["How many words?"]})


def test_shared_positions_pair_one_template_with_another_for_every_task(hypernet, descriptions):
    """Rendered tasks of a family share their templates by position: a step pairs templates i and j of every task
    (each modulo the task's count, so tasks with as many descriptions get the same pair; where i and j fall on
    one description of a shorter task, its second is drawn again)."""
    tuner = EncoderTuner(hypernet, descriptions, EncoderTuningSettings(steps=1, tasks_per_batch=6, shared_positions=True))
    longest = max(len(d) for d in descriptions.values())
    assert len({len(d) for d in descriptions.values()}) > 1  # the fixture mixes families of different sizes
    for _ in range(10):
        tasks, pairs = tuner.pairs()
        by_count: dict[int, set[tuple[int, int]]] = {}
        for t, (a, b) in zip(tasks, pairs):
            by_count.setdefault(len(descriptions[t]), set()).add((descriptions[t].index(a), descriptions[t].index(b)))
        assert all(i != j for pairs_of in by_count.values() for i, j in pairs_of)
        assert all(len({i for i, _ in pairs_of}) == 1 for pairs_of in by_count.values())  # one first template a step
        assert len(by_count[longest]) == 1  # the longest tasks never collide: one pair of templates


def test_augment_rewrites_every_drawn_description(hypernet, descriptions):
    tuner = EncoderTuner(hypernet, descriptions, EncoderTuningSettings(steps=1, tasks_per_batch=4),
                         augment=lambda task, text, rng: f"{text} ({task})")
    tasks, pairs = tuner.pairs()
    assert all(a.endswith(f"({t})") and b.endswith(f"({t})") for t, (a, b) in zip(tasks, pairs))
    assert tuner.loss().item() > 0
