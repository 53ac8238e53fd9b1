"""vLLM serving a generated adapter gives exactly what transformers + PEFT give with that folder."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

pytestmark = pytest.mark.engine

DESCRIPTIONS = [
    "Answer multiple-choice science questions with the letter of the right option.",
    "Solve grade-school math word problems step by step.",
    "Translate English sentences into French.",
    "Write a Python function that solves the programming task.",
]
PROMPT = "Question: which planet is largest? Answer:"
MAX_TOKENS = 12


def transformers_greedy(base_path, prompt: str, adapter_path=None) -> list[int]:
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    if adapter_path is not None:
        model = PeftModel.from_pretrained(model, str(adapter_path))
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=MAX_TOKENS, do_sample=False, eos_token_id=None, pad_token_id=tokenizer.pad_token_id)
    return out[0, ids.shape[1] :].tolist()


@pytest.fixture(scope="module")
def vllm_outputs(engine):
    from vllm import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
    descriptions = [None, *DESCRIPTIONS]
    outputs = engine.generate([PROMPT] * len(descriptions), descriptions, params)
    return {d: list(o.outputs[0].token_ids) for d, o in zip(descriptions, outputs)}


def test_base_model_output_equals_transformers(vllm_outputs, default_paths):
    assert vllm_outputs[None] == transformers_greedy(default_paths.base_model, PROMPT)


@pytest.mark.parametrize("description", DESCRIPTIONS)
def test_adapter_output_equals_transformers_peft(vllm_outputs, generator, default_paths, description, tmp_path):
    """The engine's adapter service and an in-process generator write the same bytes for a description."""
    folder = generator.generate([description])[0].save_peft(tmp_path / "adapter")
    expected = transformers_greedy(default_paths.base_model, PROMPT, folder)
    assert vllm_outputs[description] == expected
    assert vllm_outputs[description] != vllm_outputs[None]


def test_base_requests_batched_beside_adapters_get_the_base_output(engine, vllm_outputs):
    """Guards the CPU LoRA fix: -1 (no adapter) rows must not pick up the last slot."""
    from vllm import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
    descriptions = [DESCRIPTIONS[0], None, DESCRIPTIONS[1], None]
    outputs = engine.generate([PROMPT] * 4, descriptions, params)
    assert list(outputs[1].outputs[0].token_ids) == vllm_outputs[None]
    assert list(outputs[3].outputs[0].token_ids) == vllm_outputs[None]
    assert list(outputs[0].outputs[0].token_ids) == vllm_outputs[DESCRIPTIONS[0]]


def test_descriptions_change_the_output(vllm_outputs):
    assert len({tuple(v) for v in vllm_outputs.values()}) >= 3


def test_one_batch_more_adapters_than_slots_reuses_folders(engine):
    """Six descriptions on max_loras=2 / max_cpu_loras=4 run in one call; a repeat gives the same."""
    from vllm import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    descriptions = [*DESCRIPTIONS, "Summarise a news article in one sentence.", "Extract every date from the text."]
    first = [list(o.outputs[0].token_ids) for o in engine.generate([PROMPT] * 6, descriptions, params)]
    again = [list(o.outputs[0].token_ids) for o in engine.generate([PROMPT] * 6, list(reversed(descriptions)), params)]
    assert first == list(reversed(again))
