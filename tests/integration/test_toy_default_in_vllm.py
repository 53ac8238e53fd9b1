"""The embedded default served by vLLM does described toy tasks, as transformers does."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from t2l_vllm.toy.base import greedy_answers, prompt_text
from t2l_vllm.toy.world import TASKS

pytestmark = pytest.mark.engine

# (task, description, input): descriptions seen in training, held out, and written here
CASES = [
    ("uppercase", "Convert the text to uppercase.", "hello world"),
    ("sort_words", "Sort the words alphabetically.", "pear apple fig"),
    ("first_word", TASKS["first_word"].descriptions[-1], "alpha beta gamma"),
    ("reverse", "Spell the whole input backwards, last character first.", "stressed"),
    ("count_words", "How many words are there? Answer with a number.", "one two three"),
    ("first_letters", "Join the first letters of all the words into one word.", "text to lora"),
]


@pytest.fixture(scope="module")
def vllm_answers(engine):
    from t2l_vllm.vllm_plugin.offline import greedy

    outputs = engine.chat([[{"role": "user", "content": x}] for _, _, x in CASES], [d for _, d, _ in CASES], greedy(32))
    return [o.outputs[0].text for o in outputs]


def test_vllm_answers_equal_transformers_with_the_same_adapters(vllm_answers, generator, default_paths):
    model = AutoModelForCausalLM.from_pretrained(default_paths.base_model, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(default_paths.base_model)
    adapters = generator.generate([d for _, d, _ in CASES])
    modules = adapters[0].lora.target_modules
    weights = {m: tuple(torch.stack([a.matrices(m)[i] for a in adapters]) for i in (0, 1)) for m in modules}
    expected = greedy_answers(model, tokenizer, [prompt_text(x) for _, _, x in CASES], max_new_tokens=32,
                              loras=weights, scaling=adapters[0].lora.scaling)
    assert vllm_answers == expected


def test_most_described_tasks_are_answered_exactly(vllm_answers):
    right = [a == TASKS[t].fn(x) for a, (t, _, x) in zip(vllm_answers, CASES)]
    assert sum(right) >= 4, list(zip(vllm_answers, CASES))
