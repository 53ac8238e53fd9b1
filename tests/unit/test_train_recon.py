"""Reconstruction training: the loss falls, adapters separate by task, resume is exact, bad data is named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from t2l_vllm.adapters import LoRAAdapter, peft_key
from t2l_vllm.encoder import TaskEncoder
from t2l_vllm.errors import ConfigError, ShapeMismatchError
from t2l_vllm.hypernet.checkpoint import load_checkpoint
from t2l_vllm.hypernet.config import EncoderSettings, HypernetConfig, LoraSettings
from t2l_vllm.hypernet.model import build_hypernet
from t2l_vllm.hypernet.shapes import BaseModelShapes
from t2l_vllm.train.recon import (
    ReconSettings,
    ReconTrainer,
    TrainingDataError,
    check_targets_fit,
    load_recon_library,
    with_zscore,
)

LORA = LoraSettings(rank=8, alpha=16.0, use_rslora=True, target_modules=("q_proj", "v_proj"))
TASKS = {
    "translate": ["Translate English sentences into French.", "Render this text in French."],
    "arithmetic": ["Solve grade-school math word problems step by step.", "Add and multiply the numbers."],
    "sentiment": ["Classify the sentiment of a movie review as positive or negative.", "Is this review happy or sad?"],
}


def small_config(num_layers: int = 2, **changes) -> HypernetConfig:
    base = BaseModelShapes.from_hf_config(
        dict(model_type="llama", num_hidden_layers=num_layers, hidden_size=64, num_attention_heads=4,
             num_key_value_heads=2, intermediate_size=96)
    )
    settings = dict(variant="M", latent_size=32, head_in_size=64, lora=LORA, encoder=EncoderSettings(),
                    head_init="random", dropout=0.0)
    return HypernetConfig(base=base, **{**settings, **changes})


def write_lora(folder: Path, seed: int, config: HypernetConfig, lora: LoraSettings = LORA) -> Path:
    """A random PEFT folder shaped for `config` (change `config`/`lora` to make one that does not fit)."""
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for module in lora.target_modules:
        s = config.base.module_shape(module)
        for layer in range(config.base.num_layers):
            tensors[peft_key(layer, module, "A")] = torch.randn(lora.rank, s.in_features, generator=g) * 0.1
            tensors[peft_key(layer, module, "B")] = torch.randn(s.out_features, lora.rank, generator=g) * 0.05
    return LoRAAdapter(name=folder.name, lora=lora, tensors=tensors).save_peft(folder)


def write_library(root: Path, config: HypernetConfig) -> Path:
    lines = []
    for i, (task, descriptions) in enumerate(TASKS.items()):
        write_lora(root / "loras" / task, seed=i, config=config)
        lines.append(json.dumps({"task": task, "lora": f"loras/{task}", "descriptions": descriptions}))
    manifest = root / "library.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


@pytest.fixture(scope="module")
def encoder() -> TaskEncoder:
    return TaskEncoder(EncoderSettings())


@pytest.fixture
def library(tmp_path):
    return load_recon_library(write_library(tmp_path, small_config()))


def make_trainer(encoder, targets, zscore: bool = False, steps: int = 80, **settings) -> ReconTrainer:
    config = with_zscore(small_config()) if zscore else small_config()
    return ReconTrainer(build_hypernet(config, seed=1), encoder, targets,
                        ReconSettings(steps=steps, lr=1e-2, tasks_per_batch=3, zscore=zscore, **settings))


@pytest.mark.parametrize("zscore", [False, True])
def test_loss_falls_and_adapters_separate_by_task(encoder, library, zscore):
    trainer = make_trainer(encoder, library, zscore=zscore, warmup_frac=0.0)
    losses = trainer.train()
    assert len(losses) == 80
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5, losses

    with torch.no_grad():
        generated = trainer.hypernet(encoder.encode([t.descriptions[0] for t in library]))
    for i, own in enumerate(library):
        distances = []
        for target in library:
            d = sum(
                (generated[m].A[i] - target.lora.matrices(m)[0]).abs().mean()
                + (generated[m].B[i] - target.lora.matrices(m)[1]).abs().mean()
                for m in LORA.target_modules
            )
            distances.append(float(d))
        assert min(range(len(library)), key=distances.__getitem__) == i, (own.task, distances)


def test_zscore_writes_library_statistics(encoder, library):
    trainer = make_trainer(encoder, library, zscore=True)
    A = torch.stack([t.lora.matrices("v_proj")[0] for t in library])
    torch.testing.assert_close(trainer.hypernet.mean_A_v_proj, A.mean(0))
    torch.testing.assert_close(trainer.hypernet.std_A_v_proj, A.std(0))


def test_zscore_learns_a_library_that_differs_in_one_column(encoder, tmp_path):
    """Adapters equal everywhere but one column of one B (the toy world's cue adapters): the constants
    are written exactly and left out of the loss, and each task's column is learnt."""
    config = small_config()
    shared = LoRAAdapter.load_peft(write_lora(tmp_path / "shared", seed=0, config=config))
    g = torch.Generator().manual_seed(1)
    lines = []
    for task, descriptions in TASKS.items():
        tensors = dict(shared.tensors)
        B = tensors[peft_key(0, "v_proj", "B")].clone()
        B[:, 0] = torch.randn(B.shape[0], generator=g)
        tensors[peft_key(0, "v_proj", "B")] = B
        LoRAAdapter(name=task, lora=LORA, tensors=tensors).save_peft(tmp_path / task)
        lines.append(json.dumps({"task": task, "lora": task, "descriptions": descriptions}))
    (tmp_path / "library.jsonl").write_text("\n".join(lines) + "\n")
    library = load_recon_library(tmp_path / "library.jsonl")
    trainer = make_trainer(encoder, library, zscore=True, steps=150, warmup_frac=0.0)
    trainer.train()

    with torch.no_grad():
        generated = trainer.hypernet(encoder.encode([t.descriptions[0] for t in library]))
    columns = torch.stack([t.lora.matrices("v_proj")[1][0, :, 0] for t in library])
    for i, target in enumerate(library):
        got = generated["v_proj"].B[i, 0, :, 0]
        assert int(torch.cdist(got[None], columns).argmin()) == i, target.task
        torch.testing.assert_close(generated["q_proj"].A[i], target.lora.matrices("q_proj")[0], atol=1e-4, rtol=0)


def test_zscore_refuses_a_library_of_identical_adapters(encoder, tmp_path):
    config = small_config()
    write_lora(tmp_path / "same", seed=0, config=config)
    lines = [json.dumps({"task": task, "lora": "same", "descriptions": d}) for task, d in TASKS.items()]
    (tmp_path / "library.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(TrainingDataError, match="nothing to learn"):
        make_trainer(encoder, load_recon_library(tmp_path / "library.jsonl"), zscore=True)


@pytest.mark.parametrize("zscore", [False, True])
def test_resume_continues_exactly(encoder, library, tmp_path, zscore):
    config = small_config(dropout=0.05)  # dropout draws random numbers that must be replayed too
    config = with_zscore(config) if zscore else config
    settings = ReconSettings(steps=10, tasks_per_batch=2, zscore=zscore, seed=7)

    straight = ReconTrainer(build_hypernet(config, seed=1), encoder, library, settings)
    straight.train(steps=6)
    straight.save(tmp_path / "ckpt")
    torch.rand(100)  # the caller's use of the global RNG must not change training
    expected = straight.train(steps=4)

    resumed = ReconTrainer(build_hypernet(config, seed=2), encoder, library, settings)
    assert resumed.resume(tmp_path / "ckpt") == 6
    assert resumed.train(steps=4) == expected
    for (name, a), (_, b) in zip(straight.hypernet.state_dict().items(), resumed.hypernet.state_dict().items()):
        assert torch.equal(a, b), name

    model, _ = load_checkpoint(tmp_path / "ckpt")  # the trainer's folder is also a plain hypernet checkpoint
    assert model.config == config


def test_checkpoint_every_writes_step_folders(encoder, library, tmp_path):
    trainer = make_trainer(encoder, library, steps=5, checkpoint_every=2)
    trainer.train(tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["config.json", "model.safetensors", "step-2", "step-4", "trainer_state.pt"]
    assert (tmp_path / "run" / "step-4" / "trainer_state.pt").is_file()
    assert load_checkpoint(tmp_path / "run")[0].config == trainer.hypernet.config  # the final one, ready to serve


BAD_LINES = [
    ('{"lora": "loras/a", "descriptions": ["x"]}', "missing field `task`"),
    ('{"task": "a", "descriptions": ["x"]}', "missing field `lora`"),
    ('{"task": "a", "lora": "loras/a", "descriptions": []}', "task `a` has empty `descriptions`"),
    ('{"task": "a", "lora": "loras/a", "descriptions": ["  "]}', "task `a`: the task description is empty"),
    ('{"task": "a", "lora": "loras/nowhere", "descriptions": ["x"]}', "unreadable LoRA folder"),
    ('{"task": "a", "lora": "loras/a", "descriptions": ["x"]', "not valid JSON"),
    ('["a", "loras/a"]', "must be a mapping"),
]


@pytest.mark.parametrize("bad,fragment", BAD_LINES)
def test_bad_manifest_lines_are_named(tmp_path, bad, fragment):
    write_lora(tmp_path / "loras" / "a", seed=0, config=small_config())
    good = json.dumps({"task": "b", "lora": "loras/a", "descriptions": ["Do b."]})
    manifest = tmp_path / "lib.jsonl"
    manifest.write_text(f"{good}\n\n{bad}\n")
    with pytest.raises(TrainingDataError, match=r"lib\.jsonl:3: .*" + fragment.replace("(", r"\(")):
        load_recon_library(manifest)


def test_yaml_manifest_and_its_errors_name_lines(tmp_path):
    write_lora(tmp_path / "a", seed=0, config=small_config())
    manifest = tmp_path / "lib.yaml"
    entry = "- task: a\n  lora: a\n  descriptions: [{}]\n"
    manifest.write_text(entry.format("Do a.") + entry.format("Again."))
    with pytest.raises(TrainingDataError, match=r"lib\.yaml:4: task `a` is listed twice \(first at .*lib\.yaml:1\)"):
        load_recon_library(manifest)
    manifest.write_text(entry.format("Do a."))
    (target,) = load_recon_library(manifest)
    assert target.folder == (tmp_path / "a").resolve() and target.descriptions == ("Do a.",)


MISFITS = [  # (how the LoRA is made, message fragments)
    (dict(config=small_config(num_layers=3)), ["has the extra", "layers.2.self_attn.q_proj.lora_A"]),
    (dict(config=small_config(num_layers=1)), ["lacks", "layers.1.self_attn.q_proj.lora_A"]),
    (dict(lora=LoraSettings(rank=16, alpha=16.0 * 2**0.5, target_modules=LORA.target_modules)), ["rank 16", "rank 8"]),
    (dict(lora=LoraSettings(rank=8, alpha=16.0, target_modules=("q_proj",))), ["targets modules ['q_proj']"]),
    (dict(lora=LoraSettings(rank=8, alpha=32.0, target_modules=LORA.target_modules)), ["scaled by 11.31"]),
    (dict(config=HypernetConfig(base=BaseModelShapes.from_hf_config(dict(
        model_type="llama", num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=4,
        intermediate_size=96)), lora=LORA)), ["v_proj", "has shape [64, 8]", "makes [32, 8]"]),
]


@pytest.mark.parametrize("make,fragments", MISFITS)
def test_misfit_lora_is_named(tmp_path, make, fragments):
    folder = write_lora(tmp_path / "odd_lora", seed=0, **{"config": small_config(), **make})
    manifest = tmp_path / "lib.jsonl"
    manifest.write_text(json.dumps({"task": "odd", "lora": "odd_lora", "descriptions": ["Odd."]}) + "\n")
    with pytest.raises(ShapeMismatchError) as info:
        check_targets_fit(small_config(), load_recon_library(manifest))
    for fragment in [str(folder.resolve()), *fragments]:
        assert fragment in str(info.value)


@pytest.mark.parametrize("changes,fragment", [
    (dict(steps=0), "`steps` must be positive"),
    (dict(lr=0.0), "`lr` must be positive"),
    (dict(tasks_per_batch=0), "`tasks_per_batch`"),
    (dict(warmup_frac=1.0), "`warmup_frac`"),
    (dict(checkpoint_every=-1), "`checkpoint_every` must be >= 0"),
])
def test_settings_are_checked(changes, fragment):
    with pytest.raises(ConfigError, match=fragment):
        ReconSettings(**changes)


def test_checkpoint_every_needs_an_output_folder(encoder, library):
    with pytest.raises(ConfigError, match="needs an output folder"):
        make_trainer(encoder, library, steps=5, checkpoint_every=2).train()


def test_a_checkpoint_of_another_library_or_trainer_is_refused(encoder, library, tmp_path):
    from t2l_vllm.errors import CheckpointError

    trainer = make_trainer(encoder, library, steps=5)
    trainer.train(tmp_path / "run", steps=2)
    with pytest.raises(CheckpointError, match="another task library"):
        make_trainer(encoder, library[:2], steps=5).resume(tmp_path / "run")
    state = torch.load(tmp_path / "run" / "trainer_state.pt", weights_only=True)
    torch.save({**state, "trainer": "SFTTrainer"}, tmp_path / "run" / "trainer_state.pt")
    with pytest.raises(CheckpointError, match="is not a ReconTrainer state"):
        make_trainer(encoder, library, steps=5).resume(tmp_path / "run")


def test_zscore_needs_a_zscore_hypernet(encoder, library):
    with pytest.raises(ConfigError, match="with_zscore"):
        ReconTrainer(build_hypernet(small_config()), encoder, library, ReconSettings(zscore=True))
