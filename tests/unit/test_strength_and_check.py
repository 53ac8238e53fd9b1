"""Adapter strength against the base weights, `t2l-vllm check`, and training and serving at one scaling.

A scaling bug serves adapters that load and answer, only too strong or too weak.
The tests make one on purpose (the embedded default with its alpha raised by
sqrt(r), as honouring the reference's rsLoRA flag does) and see it flagged, and
show that what SFT and reconstruction train is what PEFT serves.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import replace

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from t2l_vllm.cli import main as cli
from t2l_vllm.errors import ConfigError
from t2l_vllm.generator import AdapterGenerator, GeneratorSettings
from t2l_vllm.hypernet.checkpoint import load_checkpoint, load_encoder_weights, save_checkpoint
from t2l_vllm.hypernet.config import HypernetConfig, LoraSettings
from t2l_vllm.hypernet.model import build_hypernet
from t2l_vllm.hypernet.shapes import load_base_shapes
from t2l_vllm.strength import STRENGTH_FILE, check_strength, overall, read_record
from t2l_vllm.toy.world import make_examples
from t2l_vllm.train.data import SFTRecord
from t2l_vllm.train.functional_lora import applied_loras
from t2l_vllm.train.sft import SFTSettings, SFTTrainer
from t2l_vllm.train.sources import HypernetSource


def rescaled_copy(default_paths, folder, factor: float):
    """The embedded default with every adapter served `factor` times stronger than it was trained."""
    shipped, _ = load_checkpoint(default_paths.hypernet)
    config = shipped.config
    hypernet = build_hypernet(config.replace(lora=replace(config.lora, alpha=config.lora.alpha * factor)))
    hypernet.load_state_dict(shipped.state_dict())
    save_checkpoint(hypernet, folder, load_encoder_weights(default_paths.hypernet, config))
    shutil.copy(default_paths.hypernet / STRENGTH_FILE, folder / STRENGTH_FILE)  # the record of how it was trained
    return folder


def test_the_embedded_default_serves_at_its_trained_strength(generator, default_paths):
    found = check_strength(generator, default_paths.hypernet, str(default_paths.base_model))
    assert found.problem is None and found.record is not None
    assert overall(found.modules) == pytest.approx(found.record.median, rel=1e-4)


def test_check_prints_the_report_for_the_embedded_default(capsys):
    assert cli(["check", "--no-vllm"]) == 0
    out = capsys.readouterr().out
    for fragment in ("encoder       ok: sentence-transformers/all-MiniLM-L6-v2", "self-check: unrelated texts at cosine",
                     "scaling       ok: r=8 alpha=16 rslora=True: alpha/sqrt(r) = 5.657 (trained)",
                     "strength      ok: 4 probe adapters", "q_proj", "vllm shapes   skipped", "every check passed"):
        assert fragment in out, out


@pytest.mark.parametrize("factor, verdict", [(math.sqrt(8), "2.83x the strength"), (1 / math.sqrt(8), "0.35x the strength")])
def test_a_deliberately_mis_scaled_checkpoint_is_flagged_and_refused_with_strict(default_paths, tmp_path, capsys, factor, verdict):
    folder = rescaled_copy(default_paths, tmp_path / "rescaled", factor)
    assert cli(["check", "--no-vllm", "--hypernet", str(folder)]) == 0  # a warning
    out = capsys.readouterr().out
    assert "strength      warning: adapters are served at" in out and verdict in out and "result        warning: strength" in out
    assert cli(["check", "--no-vllm", "--strict", "--hypernet", str(folder)]) == 1


def test_the_adapter_service_refuses_a_mis_scaled_checkpoint_with_strict(default_paths, tmp_path):
    import asyncio

    from t2l_vllm.service.client import AdapterClient, service_socket_path
    from t2l_vllm.service.settings import ServiceSettings

    folder = rescaled_copy(default_paths, tmp_path / "rescaled", math.sqrt(8))
    settings = ServiceSettings(str(folder), str(tmp_path / "adapters"), generator=GeneratorSettings(strict=True),
                               base_model=str(default_paths.base_model))
    with pytest.raises(ConfigError, match=r"served at 2.83x the strength they had in training.*Refused \(`--strict`\)"):
        asyncio.run(AdapterClient.connect_or_start(service_socket_path(f"test-{tmp_path.name}"), settings))


def test_without_base_weights_at_hand_nothing_is_measured(generator, default_paths, tmp_path):
    (tmp_path / "config.json").write_text((default_paths.base_model / "config.json").read_text())
    found = check_strength(generator, default_paths.hypernet, str(tmp_path))
    assert found.modules is None and found.problem is None


# --- what each trainer trains is what PEFT serves ---------------------------------------------------
@pytest.mark.parametrize("use_rslora", [True, False])
def test_sft_trains_at_the_scaling_peft_serves_and_records_that_strength(default_paths, generator, tmp_path, use_rslora):
    from peft import PeftModel

    records = [SFTRecord(r["task"], tuple(r["descriptions"]), ({"role": "user", "content": r["input"]},), r["output"])
               for r in make_examples(["reverse", "uppercase"], 4, seed=1)]
    config = HypernetConfig(base=load_base_shapes(default_paths.base_model), variant="L", latent_size=32, head_in_size=64,
                            lora=LoraSettings(use_rslora=use_rslora), encoder=generator.encoder.settings, head_init="random")
    source = HypernetSource(build_hypernet(config, seed=0), generator.encoder, [d for r in records for d in r.descriptions])
    base = AutoModelForCausalLM.from_pretrained(default_paths.base_model, dtype=torch.float32)
    trainer = SFTTrainer(source, base, AutoTokenizer.from_pretrained(default_paths.base_model), records,
                         SFTSettings(batch_size=4, steps=3, lr=1e-3, warmup_frac=0.0))
    trainer.train(output=tmp_path / "sft")

    served = AdapterGenerator.from_checkpoint(tmp_path / "sft")
    description = records[0].descriptions[0]
    folder = served.generate([description])[0].save_peft(tmp_path / "adapter")
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(default_paths.base_model, dtype=torch.float32), str(folder)).eval()
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    source.eval()
    with torch.no_grad(), applied_loras(base, source.adapters([description]), source.lora.scaling):  # the training forward
        torch.testing.assert_close(peft(ids).logits, base(ids).logits, rtol=1e-4, atol=1e-4)

    record = read_record(tmp_path / "sft")
    assert record.by == "SFT" and record.scaling == pytest.approx(config.lora.scaling)
    found = check_strength(served, tmp_path / "sft", str(default_paths.base_model))
    assert found.problem is None and overall(found.modules) == pytest.approx(record.median, rel=1e-4)


def test_recon_serves_the_weight_update_of_the_loras_it_was_fitted_to(tmp_path):
    """PEFT's delta-W of a generated adapter (its own scaling) is close to the target LoRA's (the target's scaling)."""
    from test_train_recon import TASKS, make_trainer, small_config, write_library

    from t2l_vllm.encoder import TaskEncoder
    from t2l_vllm.hypernet.config import EncoderSettings
    from t2l_vllm.train.recon import load_recon_library

    encoder = TaskEncoder(EncoderSettings())
    library = load_recon_library(write_library(tmp_path, small_config()))
    trainer = make_trainer(encoder, library, steps=150, warmup_frac=0.0)
    trainer.train(output=tmp_path / "recon")
    served = AdapterGenerator.from_checkpoint(tmp_path / "recon")
    for target, adapter in zip(library, served.generate([d[0] for d in TASKS.values()])):
        for module in adapter.lora.target_modules:
            A, B = adapter.matrices(module)
            At, Bt = target.lora.matrices(module)
            served_delta, target_delta = adapter.lora.scaling * B @ A, target.lora.lora.scaling * Bt @ At
            assert float((served_delta - target_delta).norm() / target_delta.norm()) < 0.5, (target.task, module)
