"""`t2l-vllm train` end to end on toy-world records (a few steps; mechanics, not quality)."""

from __future__ import annotations

import json

from t2l_vllm.adapters import LoRAAdapter
from t2l_vllm.cli import main as cli
from t2l_vllm.hypernet.checkpoint import load_checkpoint
from t2l_vllm.toy.world import make_examples, write_jsonl

STEPS = ["--steps", "3", "--batch-size", "2"]


def test_sft_lora_and_recon_commands(default_paths, tmp_path, capsys):
    data, evals = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    write_jsonl(data, make_examples(["reverse", "uppercase"], 4, seed=1))
    write_jsonl(evals, make_examples(["reverse"], 2, seed=2))
    base = str(default_paths.base_model)
    assert cli(["init-hypernet", "--model", base, "--variant", "L", "--latent-size", "16", "--head-in-size", "32", "-o", str(tmp_path / "init")]) == 0

    assert cli(["train", "sft", "--hypernet", str(tmp_path / "init"), "--data", str(data), "--eval", str(evals), *STEPS, "--checkpoint-every", "2", "-o", str(tmp_path / "sft")]) == 0
    assert "eval loss" in capsys.readouterr().out
    trained, _ = load_checkpoint(tmp_path / "sft")
    assert (tmp_path / "sft" / "step-2" / "trainer_state.pt").is_file()
    assert cli(["train", "sft", "--hypernet", str(tmp_path / "init"), "--data", str(data), "--steps", "4", "--batch-size", "2",
                "--resume", str(tmp_path / "sft" / "step-2"), "-o", str(tmp_path / "sft-resumed")]) == 0

    for task in ("reverse", "uppercase"):
        assert cli(["train", "lora", "--model", base, "--task", task, "--data", str(data), *STEPS, "-o", str(tmp_path / task)]) == 0
        adapter = LoRAAdapter.load_peft(tmp_path / task)
        assert adapter.lora.rank == trained.config.lora.rank

    manifest = tmp_path / "loras.jsonl"
    manifest.write_text("\n".join(json.dumps({"task": t, "lora": t, "descriptions": [f"Do the {t} task."]}) for t in ("reverse", "uppercase")) + "\n")
    assert cli(["train", "recon", "--library", str(manifest), "--hypernet", str(tmp_path / "init"), "--steps", "3", "-o", str(tmp_path / "recon")]) == 0
    load_checkpoint(tmp_path / "recon")


def test_a_malformed_record_stops_training_with_file_and_line(default_paths, tmp_path, capsys):
    data = tmp_path / "train.jsonl"
    data.write_text('{"task": "t", "descriptions": ["d"], "input": "x", "output": "y"}\n{"task": "t", "descriptions": ["d"], "input": "x"}\n')
    assert cli(["train", "lora", "--model", str(default_paths.base_model), "--data", str(data), *STEPS, "-o", str(tmp_path / "out")]) == 2
    assert f"{data}:2: `output` (a string) is missing" in capsys.readouterr().err
