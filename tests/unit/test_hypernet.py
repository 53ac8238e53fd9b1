"""The hypernetwork: parameter counts at real shapes, batching, determinism, initialisation."""

from __future__ import annotations

import json

import pytest
import torch

from t2l_vllm.cli import main as cli
from t2l_vllm.errors import ConfigError
from t2l_vllm.hypernet.checkpoint import load_checkpoint, save_checkpoint
from t2l_vllm.hypernet.config import EncoderSettings, HypernetConfig, LoraSettings
from t2l_vllm.hypernet.model import build_hypernet
from t2l_vllm.hypernet.shapes import BaseModelShapes

MISTRAL_7B_CONFIG = {  # config.json of Mistral-7B-Instruct-v0.2, shapes only
    "architectures": ["MistralForCausalLM"],
    "model_type": "mistral",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "vocab_size": 32000,
}
# Reported in the Text-to-LoRA paper at Mistral-7B shapes (d=128, head_in=512, r=8, q+v).
PAPER_PARAMETERS = {"L": 55.4e6, "M": 34.4e6, "S": 5.0e6}


def small_config(variant: str, **changes) -> HypernetConfig:
    base = BaseModelShapes.from_hf_config(
        dict(model_type="llama", num_hidden_layers=3, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=96)
    )
    changes.setdefault("head_init", "random")
    return HypernetConfig(base=base, variant=variant, latent_size=16, head_in_size=24, encoder=EncoderSettings(dim=32), **changes)


@pytest.mark.parametrize("variant", ["L", "M", "S"])
def test_init_hypernet_and_info_report_paper_sizes_without_weights(tmp_path, capsys, variant):
    (tmp_path / "mistral").mkdir()
    (tmp_path / "mistral" / "config.json").write_text(json.dumps(MISTRAL_7B_CONFIG))
    out = tmp_path / f"t2l_{variant}"
    args = ["init-hypernet", "--model", str(tmp_path / "mistral"), "--variant", variant, "--latent-size", "128",
            "--head-in-size", "512", "--rank", "8", "--encoder", "Alibaba-NLP/gte-large-en-v1.5", "-o", str(out)]
    assert cli(args) == 0
    capsys.readouterr()
    assert cli(["info", "--hypernet", str(out)]) == 0
    report = capsys.readouterr().out
    line = next(l for l in report.splitlines() if l.startswith("parameters"))
    count = int(line.split()[1].replace(",", ""))
    assert abs(count - PAPER_PARAMETERS[variant]) / PAPER_PARAMETERS[variant] < 0.01, report
    assert "q_proj     lora_A [8, 4096]  lora_B [4096, 8]" in report
    assert "v_proj     lora_A [8, 4096]  lora_B [1024, 8]" in report  # grouped-query attention
    assert "1024-d" in report


@pytest.mark.parametrize("variant,position", [("L", "rotary"), ("M", "rotary"), ("S", "rotary"), ("S", "learned")])
def test_batch_equals_single_passes(variant, position):
    model = build_hypernet(small_config(variant, position_encoding=position), seed=3)
    emb = torch.randn(5, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        batched = model(emb)
        for i in range(5):
            single = model(emb[i : i + 1])
            for module, w in single.items():
                torch.testing.assert_close(w.A[0], batched[module].A[i], rtol=1e-5, atol=1e-6)
                torch.testing.assert_close(w.B[0], batched[module].B[i], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("variant", ["L", "M", "S"])
def test_shapes_of_generated_matrices(variant):
    config = small_config(variant)
    out = build_hypernet(config)(torch.randn(2, 32))
    assert out["q_proj"].A.shape == (2, 3, 8, 64)
    assert out["q_proj"].B.shape == (2, 3, 64, 8)
    assert out["v_proj"].A.shape == (2, 3, 8, 64)
    assert out["v_proj"].B.shape == (2, 3, 32, 8)  # 2 kv heads x head_dim 16


@pytest.mark.parametrize("variant,position", [("L", "rotary"), ("M", "rotary"), ("S", "rotary"), ("S", "learned")])
def test_fewer_residual_blocks_drop_their_weights_and_still_write_every_matrix(tmp_path, variant, position):
    full = build_hypernet(small_config(variant, position_encoding=position), seed=0)
    for blocks, missing in ((1, ("block2.",)), (0, ("block1.", "block2."))):
        model = build_hypernet(small_config(variant, position_encoding=position, residual_blocks=blocks), seed=0)
        keys = set(model.state_dict())
        assert not any(k.startswith(missing) for k in keys)
        assert keys == {k for k in full.state_dict() if not k.startswith(missing)}
        out = model(torch.randn(2, 32))
        assert out["v_proj"].A.shape == (2, 3, 8, 64) and out["v_proj"].B.shape == (2, 3, 32, 8)
        save_checkpoint(model, tmp_path / f"{variant}{blocks}")  # the option survives a checkpoint
        loaded, _ = load_checkpoint(tmp_path / f"{variant}{blocks}")
        assert loaded.config.residual_blocks == blocks
        torch.testing.assert_close(loaded(torch.ones(1, 32))["q_proj"].B, model(torch.ones(1, 32))["q_proj"].B)


def test_the_reference_depth_is_not_written_so_older_checkpoints_keep_their_fingerprint():
    from t2l_vllm.default_model import ASSETS

    assert "residual_blocks" not in small_config("L").to_dict()
    shallow = small_config("L", residual_blocks=0)
    assert HypernetConfig.from_dict(shallow.to_dict()) == shallow
    # the shipped hypernetwork was saved before the option: it still loads, fingerprint checked
    model, digest = load_checkpoint(ASSETS / "hypernet")
    assert model.config.residual_blocks == 2 and digest == json.loads((ASSETS / "hypernet" / "config.json").read_text())["fingerprint"]


def test_a_residual_block_count_outside_0_to_2_is_refused():
    with pytest.raises(ConfigError, match="residual_blocks"):
        small_config("L", residual_blocks=3)


def test_hyperinit_starts_from_peft_default_lora():
    """bias-HyperInit: every description gives PEFT's initial LoRA, B = 0 so delta-W = 0."""
    model = build_hypernet(small_config("L", head_init="hyperinit"))
    out = model(torch.randn(3, 32))
    w = out["q_proj"]
    assert torch.count_nonzero(w.B) == 0
    torch.testing.assert_close(w.A[0], w.A[2])  # independent of the description
    bound = 1 / 64**0.5  # kaiming-uniform(a=sqrt(5)) bound for in_features=64
    assert w.A.abs().max() <= bound and w.A.abs().max() > bound / 2


def test_build_is_deterministic_per_seed():
    a, b, c = (build_hypernet(small_config("M"), seed=s) for s in (1, 1, 2))
    emb = torch.randn(1, 32)
    assert torch.equal(a(emb)["q_proj"].A, b(emb)["q_proj"].A)
    assert not torch.equal(a(emb)["q_proj"].A, c(emb)["q_proj"].A)


def test_lora_scaling_follows_rslora():
    assert LoraSettings(rank=8, alpha=16, use_rslora=True).scaling == pytest.approx(16 / 8**0.5)
    assert LoraSettings(rank=8, alpha=16, use_rslora=False).scaling == pytest.approx(2.0)


def test_gemma2_shapes_from_config():
    gemma = BaseModelShapes.from_hf_config(
        dict(model_type="gemma2", num_hidden_layers=26, hidden_size=2304, num_attention_heads=8, num_key_value_heads=4, head_dim=256, intermediate_size=9216)
    )
    q, v = gemma.module_shape("q_proj"), gemma.module_shape("v_proj")
    # head_dim * heads (2048) differs from hidden (2304) on Gemma-2: shapes must come from head_dim.
    assert (q.in_features, q.out_features, v.out_features) == (2304, 2048, 1024)
    assert 26 * 8 * (q.in_features + q.out_features + v.in_features + v.out_features) == 1_597_440
