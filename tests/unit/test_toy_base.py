"""The toy-world base model's tokenizer, structured cue and training loop (seconds of training: mechanics only)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from t2l_vllm.train.toy_base import PARTS_FILE, REPORT_FILE, ToyBaseSettings, ToyBaseTrainer, build_toy_tokenizer, encode, tag, train_toy_base
from t2l_vllm.train.toy_world import CUE_PARTS, HELDOUT_TASKS, TASKS

TINY = dict(hidden_size=64, num_heads=1, intermediate_size=64, num_layers=1, batch_size=4, eval_examples=4)


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
    report = train_toy_base(tmp_path / "base", ToyBaseSettings(steps=4, log_every=2, **TINY), log=lambda _: None)
    assert report["steps"] == 4 and set(report["exact_match_with_tag"]) == set(TASKS)
    assert [h["step"] for h in report["history"]] == [2, 4]
    assert json.loads((tmp_path / "base" / REPORT_FILE).read_text())["steps"] == 4
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "base")
    assert model.config.head_dim == 64 and len(tokenizer) == model.config.vocab_size


def test_a_saved_tag_embedding_is_the_sum_of_its_cue_parts(tmp_path):
    """A held-out task's cue is made of parts that training tasks' cues share."""
    train_toy_base(tmp_path / "base", ToyBaseSettings(steps=2, log_every=0, **TINY), log=lambda _: None)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "base")
    parts = load_file(str(tmp_path / "base" / PARTS_FILE))["parts"]
    embeddings = model.get_input_embeddings().weight
    for task in (*HELDOUT_TASKS, "reverse", "capitalize_words"):
        first, second = (CUE_PARTS.index(part) for part in TASKS[task].cue)
        row = embeddings[tokenizer.convert_tokens_to_ids(tag(task))]
        torch.testing.assert_close(row, parts[first] + parts[second])
    assert TASKS["keep_first_3"].cue == ("keep_first", "k3") and TASKS["capitalize_words"].cue == ("upper_first", "k1")


def test_training_resumes_exactly_from_a_checkpoint(tmp_path):
    settings = ToyBaseSettings(steps=4, log_every=0, checkpoint_every=2, **TINY)
    straight = ToyBaseTrainer(settings)
    losses = straight.train(tmp_path / "run")
    assert (tmp_path / "run" / "step-2" / "trainer_state.pt").is_file()
    torch.rand(10)  # the caller's global RNG plays no part
    resumed = ToyBaseTrainer(settings)
    assert resumed.resume(tmp_path / "run" / "step-2") == 2
    assert resumed.train(tmp_path / "resumed", steps=2) == pytest.approx(losses[2:], abs=1e-6)
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)


@pytest.mark.parametrize("args, fragment", [
    (["--steps", "0"], "`steps` must be positive, got 0"),
    (["--hidden-size", "-1"], "`hidden-size` must be positive"),
    (["--lr", "0"], "`lr` must be positive"),
])
def test_bad_settings_stop_before_training_with_a_clear_error(tmp_path, capsys, args, fragment):
    from t2l_vllm.cli import main

    assert main(["train", "base", "-o", str(tmp_path / "base"), *args]) == 2
    assert fragment in capsys.readouterr().err
    assert not (tmp_path / "base").exists()
