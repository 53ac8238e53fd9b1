"""Descriptions to adapters through the real MiniLM encoder and the embedded hypernetwork."""

from __future__ import annotations

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from t2l_vllm.adapters import LoRAAdapter, check_adapter
from t2l_vllm.hypernet.checkpoint import load_checkpoint

DESCRIPTIONS = [
    "Answer multiple-choice science questions.",
    "Solve grade-school math word problems step by step.",
    "Translate English sentences into French.",
    "Decide whether a movie review is positive or negative.",
]


def test_same_description_gives_byte_identical_files(generator, default_paths, tmp_path):
    from t2l_vllm.generator import AdapterGenerator

    other = AdapterGenerator.from_checkpoint(default_paths.hypernet)  # a second, independent load
    first = generator.generate([DESCRIPTIONS[0]])[0].save_peft(tmp_path / "a")
    second = other.generate([DESCRIPTIONS[0]])[0].save_peft(tmp_path / "b")
    for name in ("adapter_model.safetensors", "adapter_config.json", "t2l_adapter.json"):
        assert (first / name).read_bytes() == (second / name).read_bytes()


def test_batch_gives_the_same_adapters_as_single_passes(generator):
    batch = generator.generate(DESCRIPTIONS)
    for description, batched in zip(DESCRIPTIONS, batch):
        single = generator.generate([description])[0]
        assert single.name == batched.name
        for key, tensor in single.tensors.items():
            torch.testing.assert_close(tensor, batched.tensors[key], rtol=1e-5, atol=1e-6)


def test_different_descriptions_give_different_adapters_and_names(generator):
    adapters = generator.generate(DESCRIPTIONS)
    assert len({a.name for a in adapters}) == len(DESCRIPTIONS)
    key = next(iter(adapters[0].tensors))
    assert not torch.allclose(adapters[0].tensors[key], adapters[1].tensors[key])


def test_white_space_and_unicode_form_do_not_change_the_adapter(generator):
    a, b = generator.generate(["Caf\u00e9 menu  translation", "  Cafe\u0301 menu translation\n"])
    assert a.name == b.name


def test_names_depend_on_the_hypernetwork(generator, default_paths):
    from t2l_vllm.generator import AdapterGenerator

    model, _ = load_checkpoint(default_paths.hypernet)
    with torch.no_grad():
        model.heads["q_proj"].bias.add_(0.01)
    altered = AdapterGenerator(model, generator.encoder, "another-fingerprint")
    assert altered.name_for(DESCRIPTIONS[0]) != generator.name_for(DESCRIPTIONS[0])


def test_a_bfloat16_generator_names_its_adapters_apart_from_float32_ones(generator, default_paths):
    from t2l_vllm.generator import AdapterGenerator, GeneratorSettings

    assert generator.dtype == torch.float32 and generator.fingerprint == load_checkpoint(default_paths.hypernet)[1]
    bf16 = AdapterGenerator.from_checkpoint(default_paths.hypernet, GeneratorSettings(dtype="bfloat16"))
    assert bf16.fingerprint != generator.fingerprint
    ours, theirs = generator.generate([DESCRIPTIONS[0]])[0], bf16.generate([DESCRIPTIONS[0]])[0]
    assert ours.name != theirs.name
    key = next(iter(ours.tensors))
    assert not torch.equal(ours.tensors[key], theirs.tensors[key])  # other weights: hence another name


def test_peft_folder_round_trips_through_peft(generator, default_paths, tmp_path):
    adapter = generator.generate([DESCRIPTIONS[1]])[0]
    folder = adapter.save_peft(tmp_path / adapter.name)
    base = AutoModelForCausalLM.from_pretrained(default_paths.base_model, dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(base, str(folder))
    layer = peft_model.base_model.model.model.layers[1].self_attn.v_proj
    torch.testing.assert_close(layer.lora_A["default"].weight, adapter.tensors["base_model.model.model.layers.1.self_attn.v_proj.lora_A.weight"])
    torch.testing.assert_close(layer.lora_B["default"].weight, adapter.tensors["base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"])
    assert layer.scaling["default"] == adapter.lora.scaling
    reloaded = LoRAAdapter.load_peft(folder)
    assert reloaded.lora == adapter.lora
    assert all(torch.equal(reloaded.tensors[k], v) for k, v in adapter.tensors.items())
    check_adapter(reloaded)
