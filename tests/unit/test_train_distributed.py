"""SFT under torchrun: two CPU processes (gloo) stay identical and learn together, also through the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import torch

SCRIPT = textwrap.dedent(
    """
    import sys, torch, torch.distributed as dist
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from t2l_vllm.default_model import default_paths
    from t2l_vllm.encoder import TaskEncoder
    from t2l_vllm.hypernet.config import EncoderSettings, HypernetConfig
    from t2l_vllm.hypernet.model import build_hypernet
    from t2l_vllm.hypernet.shapes import load_base_shapes
    from t2l_vllm.train.data import SFTRecord
    from t2l_vllm.train.sft import SFTSettings, SFTTrainer
    from t2l_vllm.train.sources import HypernetSource
    from t2l_vllm.toy.world import make_examples

    dist.init_process_group("gloo")
    out = sys.argv[1]
    paths = default_paths()
    records = [SFTRecord(r["task"], tuple(r["descriptions"]), ({"role": "user", "content": r["input"]},), r["output"])
               for r in make_examples(["reverse", "uppercase", "sort_words"], 4, seed=1)]
    config = HypernetConfig(base=load_base_shapes(paths.base_model), variant="M", latent_size=32, head_in_size=64, encoder=EncoderSettings())
    source = HypernetSource(build_hypernet(config, seed=0), TaskEncoder(config.encoder), [d for r in records for d in r.descriptions])
    base = AutoModelForCausalLM.from_pretrained(paths.base_model, dtype=torch.float32)
    trainer = SFTTrainer(source, base, AutoTokenizer.from_pretrained(paths.base_model), records,
                         SFTSettings(steps=4, batch_size=3, lr=3e-3, warmup_frac=0.0))
    initial = {k: v.clone() for k, v in source.state_dict().items()}
    first = trainer.sample()
    trainer.rng.python.seed(trainer.settings.seed + trainer.rank)  # the batch drawn above is drawn again
    trainer.train(output=out + "/ckpt")
    torch.save({"initial": initial, "state": source.state_dict(), "first_batch": [r.output for r in first[0]]}, f"{out}/rank{trainer.rank}.pt")
    dist.destroy_process_group()
    """
)


def torchrun(*args: str) -> subprocess.CompletedProcess:
    """Two local processes on a free port (`--standalone`), one thread each."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args]
    return subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)


def test_two_ranks_sample_different_batches_and_end_identical(default_paths, tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(SCRIPT)
    result = torchrun(str(script), str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert ranks[0]["first_batch"] != ranks[1]["first_batch"]  # each rank its own examples
    assert ranks[0]["state"].keys() == ranks[1]["state"].keys()
    for name, a in ranks[0]["state"].items():
        torch.testing.assert_close(a, ranks[1]["state"][name], rtol=0, atol=0, msg=name)  # averaged gradients keep them equal
    changed = [k for k, v in ranks[0]["state"].items() if not torch.equal(v, ranks[0]["initial"][k])]
    assert changed, "training did not change any weight"
    assert (tmp_path / "ckpt" / "trainer_state.rank0.pt").is_file() and (tmp_path / "ckpt" / "trainer_state.rank1.pt").is_file()
    assert (tmp_path / "ckpt" / "model.safetensors").is_file()


def test_the_documented_torchrun_command_trains_and_writes_once(default_paths, tmp_path):
    from t2l_vllm.toy.world import make_examples, write_jsonl

    write_jsonl(tmp_path / "train.jsonl", make_examples(["reverse", "uppercase"], 4, seed=2))
    out = tmp_path / "lora"
    result = torchrun("-m", "t2l_vllm", "train", "lora", "--model", str(default_paths.base_model), "--data", str(tmp_path / "train.jsonl"),
                      "--steps", "2", "--batch-size", "2", "--device", "cpu", "-o", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count(f"wrote {out}") == 1  # rank 0 alone reports
    assert (out / "adapter_model.safetensors").is_file()
    assert sorted(p.name for p in out.glob("trainer_state*")) == ["trainer_state.rank0.pt", "trainer_state.rank1.pt"]


def test_reconstruction_refuses_to_run_under_torchrun(monkeypatch, tmp_path, capsys):
    from t2l_vllm.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["train", "recon", "--library", str(tmp_path / "x.jsonl"), "--hypernet", str(tmp_path), "-o", str(tmp_path / "o")]) == 2
    assert "only `train sft` and `train lora` run under torchrun" in capsys.readouterr().err
