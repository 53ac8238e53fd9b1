"""The toy-world base model's tokenizer and training loop (seconds of training: mechanics only)."""

from __future__ import annotations

import json

import pytest

from transformers import AutoModelForCausalLM, AutoTokenizer

from t2l_vllm.train.toy_base import ToyBaseSettings, build_toy_tokenizer, encode, tag, train_toy_base
from t2l_vllm.train.toy_world import TASKS


def test_each_task_tag_is_one_token_and_chat_gives_the_bare_input():
    tokenizer = build_toy_tokenizer()
    for task in TASKS:
        assert len(tokenizer(tag(task), add_special_tokens=False).input_ids) == 1
    prompt = tokenizer.apply_chat_template([{"role": "system", "content": "ignored"}, {"role": "user", "content": "ab cd"}],
                                           tokenize=False, add_generation_prompt=True)
    assert prompt == "<s>ab cd\n"
    ids, labels = encode(tokenizer, "reverse", "ab cd", "dc ba")
    answer = [i for i, l in zip(ids, labels) if l != -100]
    assert tokenizer.decode(answer, skip_special_tokens=True) == "dc ba" and answer[-1] == tokenizer.eos_token_id


def test_training_runs_saves_and_reports(tmp_path):
    report = train_toy_base(tmp_path / "base", ToyBaseSettings(minutes=0.05, eval_every=10, eval_examples=4), log=lambda _: None)
    assert report["steps"] > 0 and set(report["exact_match_with_tag"]) == set(TASKS)
    assert json.loads((tmp_path / "base" / "toy_base_report.json").read_text())["steps"] == report["steps"]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "base")
    assert model.config.head_dim == 64 and len(tokenizer) == model.config.vocab_size


@pytest.mark.parametrize("args, fragment", [
    (["--max-steps", "0"], "`max-steps` must be positive, got 0"),
    (["--minutes", "-1"], "`minutes` must be positive"),
    (["--lr", "0"], "`lr` and `minutes` must be positive"),
])
def test_bad_settings_stop_before_training_with_a_clear_error(tmp_path, capsys, args, fragment):
    from t2l_vllm.cli import main

    assert main(["train", "base", "-o", str(tmp_path / "base"), *args]) == 2
    assert fragment in capsys.readouterr().err
    assert not (tmp_path / "base").exists()
