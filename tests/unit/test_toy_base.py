"""The toy-world base model: tokenizer, structured cue, training loop (seconds of training: mechanics only)."""

from __future__ import annotations

import json
import random

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from t2l_vllm.errors import CheckpointError, ConfigError
from t2l_vllm.toy.base import (
    PARTS_FILE, REPORT_FILE, ToyBaseSettings, ToyBaseTrainer, ToyCues, bos_reader, build_toy_tokenizer, cue_adapter, cued,
    encode, greedy_answers, prompt_text, train_toy_base,
)
from t2l_vllm.toy.world import CUE_PARTS, HELDOUT_TASKS, TASKS

TINY = dict(hidden_size=64, num_heads=1, intermediate_size=64, num_layers=1, batch_size=4, eval_examples=4)


def test_the_prompt_is_the_bare_input_and_the_answer_is_the_output():
    tokenizer = build_toy_tokenizer()
    prompt = tokenizer.apply_chat_template([{"role": "system", "content": "ignored"}, {"role": "user", "content": "ab cd"}],
                                           tokenize=False, add_generation_prompt=True)
    assert prompt == "<s>ab cd\n" == tokenizer.bos_token + prompt_text("ab cd")
    ids, labels = encode(tokenizer, "ab cd", "dc ba")
    answer = [i for i, l in zip(ids, labels) if l != -100]
    assert tokenizer.decode(answer, skip_special_tokens=True) == "dc ba" and answer[-1] == tokenizer.eos_token_id
    assert len(tokenizer) == 259  # bytes and three special tokens: nothing in the text names a task


def test_a_cue_is_the_sum_of_its_two_parts_shared_with_training_tasks():
    cues = ToyCues(8)
    for task in (*HELDOUT_TASKS, "reverse", "capitalize_words"):
        first, second = (CUE_PARTS.index(part) for part in TASKS[task].cue)
        torch.testing.assert_close(cues([task])[0], cues.parts[first] + cues.parts[second])
    assert TASKS["keep_first_3"].cue == ("keep_first", "k3") and TASKS["capitalize_words"].cue == ("upper_first", "k1")


def test_greedy_decoding_with_a_cue_equals_full_cued_forwards():
    """The cue is added once, to the prompt's `<s>` (left-padded), and stays in the KV cache while decoding."""
    trainer = ToyBaseTrainer(ToyBaseSettings(steps=1, **{**TINY, "num_layers": 2}))
    model, tokenizer = trainer.model.eval(), trainer.tokenizer
    with torch.no_grad():
        trainer.cues.parts.normal_(0, 2.0)  # a cue strong enough to change the answer
        prompts, tasks = [prompt_text("ab"), prompt_text("hello world")], ["reverse", "uppercase"]
        answers = greedy_answers(model, tokenizer, prompts, max_new_tokens=4, cues=trainer.cues(tasks))
        assert answers != greedy_answers(model, tokenizer, prompts, max_new_tokens=4)
        for prompt, task, answer in zip(prompts, tasks, answers):
            ids = torch.tensor([[tokenizer.bos_token_id, *tokenizer(prompt, add_special_tokens=False).input_ids]])
            for _ in range(4):
                with cued(model, trainer.cues([task]), torch.zeros(1, dtype=torch.long), ids.shape[1]):
                    ids = torch.cat([ids, model(ids).logits[:, -1:].argmax(-1)], 1)
            expected = ids[0, -4:].tolist()
            if tokenizer.eos_token_id in expected:
                expected = expected[: expected.index(tokenizer.eos_token_id)]
            assert answer == tokenizer.decode(expected, skip_special_tokens=True)


def test_a_cue_adapter_answers_exactly_as_the_cue_does():
    """The closed-form adapter of the shipped base: the cued model's answers, on training and held-out tasks."""
    from t2l_vllm.default_model import default_paths
    from t2l_vllm.hypernet.config import LoraSettings
    from t2l_vllm.hypernet.shapes import load_base_shapes
    from t2l_vllm.toy.world import random_input

    base = default_paths().base_model
    model, tokenizer = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(base)
    cues, lora = ToyCues.load(base), LoraSettings()  # the reference's: rank 8 on q_proj and v_proj
    reader, shapes = bos_reader(model, tokenizer), load_base_shapes(base)
    rng = random.Random(0)
    tasks = ["reverse", "shift_forward_2", "upper_last_4", *HELDOUT_TASKS]
    rows = [(task, random_input(rng)) for task in tasks for _ in range(6)]
    prompts = [prompt_text(x) for _, x in rows]
    with torch.no_grad():
        vectors = cues([t for t, _ in rows])
        adapters = {t: cue_adapter(t, cues([t])[0], reader, shapes, lora) for t in tasks}
    weights = {m: tuple(torch.stack([adapters[t].matrices(m)[i] for t, _ in rows]) for i in (0, 1)) for m in lora.target_modules}
    with_adapter = greedy_answers(model, tokenizer, prompts, loras=weights, scaling=lora.scaling)
    assert with_adapter == greedy_answers(model, tokenizer, prompts, cues=vectors)
    assert sum(a == TASKS[t].fn(x) for a, (t, x) in zip(with_adapter, rows)) >= 0.8 * len(rows)
    A = adapters["reverse"].matrices("v_proj")[0]
    assert torch.count_nonzero(A) == A.shape[-1]  # one row of one layer: nothing else is touched
    with pytest.raises(ConfigError, match="v_proj"):
        cue_adapter("x", vectors[0], reader, shapes, LoraSettings(target_modules=("q_proj",)))


def test_training_runs_saves_and_reports(tmp_path):
    report = train_toy_base(tmp_path / "base", ToyBaseSettings(steps=4, log_every=2, **TINY), log=lambda _: None)
    assert report["steps"] == 4 and set(report["exact_match_with_cue"]) == set(TASKS)
    assert [h["step"] for h in report["history"]] == [2, 4]
    assert json.loads((tmp_path / "base" / REPORT_FILE).read_text())["steps"] == 4
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "base")
    assert model.config.head_dim == 64 and len(tokenizer) == model.config.vocab_size
    assert ToyCues.load(tmp_path / "base").parts.shape == (len(CUE_PARTS), 64)
    (tmp_path / "base" / PARTS_FILE).unlink()
    with pytest.raises(CheckpointError, match=PARTS_FILE):
        ToyCues.load(tmp_path / "base")


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
    torch.testing.assert_close(straight.cues.parts, resumed.cues.parts, rtol=0, atol=1e-6)


def test_mixed_cues_lean_a_drawn_share_toward_another_tasks_cue():
    exact = ToyBaseTrainer(ToyBaseSettings(steps=1, **TINY))
    tasks = ["reverse", "keep_first_3", "uppercase"] * 20
    torch.testing.assert_close(exact.mixed_cues(tasks), exact.cues(tasks))  # cue_mix 0: the cues themselves
    trainer = ToyBaseTrainer(ToyBaseSettings(steps=1, cue_mix=0.4, cue_mix_fraction=0.5, **TINY))
    with torch.no_grad():
        trainer.cues.parts.normal_()
        mixed, cues = trainer.mixed_cues(tasks), trainer.cues(tasks)
        every = trainer.cues(trainer.tasks)
    shares = []
    for task, m, c in zip(tasks, mixed, cues):
        toward = every - c  # (tasks, value): the way to every task's cue
        share = (toward @ (m - c)) / toward.pow(2).sum(1).clamp_min(1e-12)
        fits = [(s.item(), o) for s, o, t in zip(share, trainer.tasks, toward) if torch.allclose(c + s * t, m, atol=1e-5) and o != task]
        assert torch.equal(m, c) or fits, f"a mixed cue of {task} off every segment toward another task's cue"
        shares.append(max(s for s, _ in fits) if fits and not torch.equal(m, c) else 0.0)
    assert all(0.0 <= s < 0.4 for s in shares)
    assert 10 <= sum(s > 0 for s in shares) <= 50  # about half of the 60 are mixed


def test_fine_tuning_grows_a_base_model_of_a_smaller_world(tmp_path):
    """A base model saved with fewer cue parts (written here: a stand-in for an older, smaller world) starts a
    wider world's run: its parts are copied by name, the missing ones start fresh and are reported."""
    train_toy_base(tmp_path / "first", ToyBaseSettings(steps=2, **TINY), log=lambda _: None)
    saved = ToyCues.saved_parts(tmp_path / "first")
    smaller = {name: vector for name, vector in saved.items() if name != "k6"}
    save_file({"parts": torch.stack(list(smaller.values()))}, str(tmp_path / "first" / PARTS_FILE), metadata={"parts": json.dumps(list(smaller))})
    with pytest.raises(CheckpointError, match="another toy world"):
        ToyCues.load(tmp_path / "first")
    report = train_toy_base(tmp_path / "grown", ToyBaseSettings(steps=2, freeze_cues=True, **TINY), init_from=tmp_path / "first",
                            log=lambda _: None)
    assert report["new_cue_parts"] == ["k6"]
    grown = ToyCues.saved_parts(tmp_path / "grown")
    assert all(torch.equal(grown[name], vector) for name, vector in smaller.items()) and not torch.equal(grown["k6"], saved["k6"])
    foreign = {**saved, "k99": saved["k6"]}
    save_file({"parts": torch.stack(list(foreign.values()))}, str(tmp_path / "first" / PARTS_FILE), metadata={"parts": json.dumps(list(foreign))})
    with pytest.raises(CheckpointError, match="does not have"):
        train_toy_base(tmp_path / "x", ToyBaseSettings(steps=2, **TINY), init_from=tmp_path / "first", log=lambda _: None)


def test_fine_tuning_from_a_trained_model_keeps_its_frozen_cues(tmp_path):
    train_toy_base(tmp_path / "first", ToyBaseSettings(steps=2, **TINY), log=lambda _: None)
    settings = ToyBaseSettings(steps=2, cue_mix=0.3, freeze_cues=True, **TINY)
    report = train_toy_base(tmp_path / "tuned", settings, init_from=tmp_path / "first", log=lambda _: None)
    assert report["init_from"] == str(tmp_path / "first") and report["steps"] == 2
    torch.testing.assert_close(ToyCues.load(tmp_path / "tuned").parts, ToyCues.load(tmp_path / "first").parts, rtol=0, atol=0)
    first, tuned = (AutoModelForCausalLM.from_pretrained(tmp_path / name).state_dict() for name in ("first", "tuned"))
    assert any(not torch.equal(first[k], tuned[k]) for k in first)  # the model itself was trained
    with pytest.raises(ConfigError, match="not both"):
        train_toy_base(tmp_path / "x", settings, resume=tmp_path / "tuned", init_from=tmp_path / "first")
    with pytest.raises(CheckpointError, match="cannot load the toy base model"):
        train_toy_base(tmp_path / "x", ToyBaseSettings(steps=2, **{**TINY, "hidden_size": 128}), init_from=tmp_path / "first")
    (tmp_path / "not_a_model").mkdir()
    (tmp_path / "not_a_model" / "config.json").write_text("{}")  # a folder with a config but no model type
    with pytest.raises(CheckpointError, match="cannot load the toy base model"):
        train_toy_base(tmp_path / "x", settings, init_from=tmp_path / "not_a_model")


@pytest.mark.parametrize("args, fragment", [
    (["--steps", "0"], "`steps` must be positive, got 0"),
    (["--hidden-size", "-1"], "`hidden-size` must be positive"),
    (["--lr", "0"], "`lr` must be positive"),
    (["--cue-mix", "0.5"], "`cue-mix` must be in [0, 0.5)"),
    (["--cue-mix-fraction", "1.5"], "`cue-mix-fraction` must be in [0, 1]"),
])
def test_bad_settings_stop_before_training_with_a_clear_error(tmp_path, capsys, args, fragment):
    from t2l_vllm.cli import main

    assert main(["train", "base", "-o", str(tmp_path / "base"), *args]) == 2
    assert fragment in capsys.readouterr().err
    assert not (tmp_path / "base").exists()
