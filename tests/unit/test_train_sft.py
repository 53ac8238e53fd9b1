"""SFT training mechanics on the embedded tiny base model and toy-world records."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from t2l_vllm.hypernet.config import HypernetConfig, LoraSettings
from t2l_vllm.hypernet.model import build_hypernet
from t2l_vllm.hypernet.shapes import load_base_shapes
from t2l_vllm.toy.world import make_examples
from t2l_vllm.train.data import SFTRecord, TrainingDataError, load_sft_records
from t2l_vllm.train.sft import SFTSettings, SFTTrainer
from t2l_vllm.train.sources import HypernetSource, SingleLoRA


@pytest.fixture(scope="module")
def records():
    return [SFTRecord(r["task"], tuple(r["descriptions"]), ({"role": "user", "content": r["input"]},), r["output"])
            for r in make_examples(["reverse", "uppercase"], 4, seed=1)]


def make_trainer(default_paths, generator, records, variant="M", **settings):
    config = HypernetConfig(base=load_base_shapes(default_paths.base_model), variant=variant, latent_size=32, head_in_size=64,
                            lora=LoraSettings(target_modules=("q_proj", "v_proj")), encoder=generator.encoder.settings)
    source = HypernetSource(build_hypernet(config, seed=0), generator.encoder, [d for r in records for d in r.descriptions])
    base = AutoModelForCausalLM.from_pretrained(default_paths.base_model, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(default_paths.base_model)
    return SFTTrainer(source, base, tokenizer, records, SFTSettings(**{"batch_size": 4, "steps": 30, "lr": 3e-3, "warmup_frac": 0.0, **settings}))


def test_loss_falls_on_a_small_fixed_set(default_paths, generator, records):
    trainer = make_trainer(default_paths, generator, records)
    before = trainer.evaluate(records)
    trainer.train()
    after = trainer.evaluate(records)
    assert after < 0.8 * before, (before, after)


def test_hyperinit_starts_from_the_base_model(default_paths, generator, records):
    """With bias-HyperInit an L hypernetwork generates B = 0, so the first loss is the base model's.
    (M and S share one head between A and B, so their initial B is not zero, as in the reference.)"""
    from t2l_vllm.train.data import collate, encode_example

    trainer = make_trainer(default_paths, generator, records, variant="L")
    batch = collate([encode_example(trainer.tokenizer, r, 512) for r in records[:2]], trainer.tokenizer.pad_token_id)
    with torch.no_grad():
        logits = trainer.base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        base_ce = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(), ignore_index=-100)
    assert trainer.evaluate(records[:2]) == pytest.approx(float(base_ce), rel=1e-5)


def test_resume_takes_the_same_next_step(default_paths, generator, records, tmp_path):
    straight = make_trainer(default_paths, generator, records, steps=6)
    for _ in range(3):
        straight.train_step()
    straight.save(tmp_path / "ckpt")
    expected_loss = straight.train_step()
    resumed = make_trainer(default_paths, generator, records, steps=6)
    resumed.resume(tmp_path / "ckpt")
    assert resumed.step == 3
    assert resumed.train_step() == pytest.approx(expected_loss, abs=1e-6)
    for (name, a), b in zip(straight.source.state_dict().items(), resumed.source.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)


def test_a_plain_lora_learns_and_round_trips_through_peft(default_paths, records, tmp_path):
    from peft import PeftModel

    source = SingleLoRA(load_base_shapes(default_paths.base_model), LoraSettings(target_modules=("q_proj", "v_proj")))
    base = AutoModelForCausalLM.from_pretrained(default_paths.base_model, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(default_paths.base_model)
    trainer = SFTTrainer(source, base, tokenizer, records, SFTSettings(batch_size=4, steps=30, lr=1e-2, warmup_frac=0.0, l2_generated=0.0))
    before = trainer.evaluate(records)
    trainer.train(output=tmp_path / "lora")
    after = trainer.evaluate(records)
    assert after < 0.8 * before, (before, after)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(default_paths.base_model, dtype=torch.float32), str(tmp_path / "lora")).eval()
    from t2l_vllm.train.functional_lora import applied_loras

    with torch.no_grad(), applied_loras(base, source.adapters(["x"]), source.lora.scaling):
        torch.testing.assert_close(peft(ids).logits, base(ids).logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "line,fragment",
    [
        ("{not json", ":2: not valid JSON"),
        ('{"task": "t", "descriptions": ["d"], "input": "x"}', ":2: `output` (a string) is missing"),
        ('{"task": "t", "descriptions": [], "input": "x", "output": "y"}', ":2: `descriptions` must be"),
        ('{"task": "t", "descriptions": ["d"], "output": "y"}', ":2: give the prompt as `input`"),
        ('["a list"]', ":2: a record must be a JSON object"),
    ],
)
def test_bad_training_records_name_file_line_and_problem(tmp_path, line, fragment):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"task": "t", "descriptions": ["d"], "input": "x", "output": "y"}) + "\n" + line + "\n")
    with pytest.raises(TrainingDataError) as err:
        load_sft_records(path)
    assert str(path) in str(err.value) and fragment in str(err.value)
