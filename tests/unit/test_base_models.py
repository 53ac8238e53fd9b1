"""Which base models t2l_vllm adapts, read from config.json: the families, fused projections, refusals.

A base that cannot be adapted is refused with a message naming the reason at
`init-hypernet`, `import-reference` and `serve` (before vLLM starts), never
given adapters that would not apply.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from t2l_vllm.cli import main as cli
from t2l_vllm.hypernet.shapes import ARCHITECTURES, MODULE_FEATURES, BaseModelShapes
from t2l_vllm.testing.reference_checkpoint import write_reference_checkpoint

LLAMA = {  # a tiny Llama: only config.json is ever read here
    "model_type": "llama", "architectures": ["LlamaForCausalLM"], "num_hidden_layers": 2, "hidden_size": 256,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64, "intermediate_size": 512,
}
PHI3_MINI = {  # config.json of Phi-3-mini-4k-instruct, shapes only
    "model_type": "phi3", "architectures": ["Phi3ForCausalLM"], "num_hidden_layers": 32, "hidden_size": 3072,
    "num_attention_heads": 32, "num_key_value_heads": 32, "intermediate_size": 8192, "vocab_size": 32064,
}
MIXTRAL = {**LLAMA, "model_type": "mixtral", "architectures": ["MixtralForCausalLM"], "num_local_experts": 4}
GPT2 = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_embd": 768, "n_head": 12, "n_layer": 12}
FALCON = {  # has the sizes, but one fused `query_key_value` and no q_proj anywhere
    "model_type": "falcon", "architectures": ["FalconForCausalLM"], "hidden_size": 4544,
    "num_attention_heads": 71, "num_hidden_layers": 32, "intermediate_size": 18176,
}
T5 = {"model_type": "t5", "architectures": ["T5ForConditionalGeneration"], "is_encoder_decoder": True, "d_model": 512}
BART = {  # an encoder-decoder with decoder sizes under the usual names
    "model_type": "bart", "is_encoder_decoder": True, "hidden_size": 768, "num_hidden_layers": 6,
    "num_attention_heads": 12, "intermediate_size": 3072,
}
LLAVA = {"model_type": "llava", "architectures": ["LlavaForConditionalGeneration"], "text_config": LLAMA}
NO_SIZES = {k: v for k, v in LLAMA.items() if k not in ("hidden_size", "intermediate_size")}
NO_MODEL_TYPE = {k: v for k, v in LLAMA.items() if k != "model_type"}

# name -> (config.json, extra init-hypernet arguments, message fragments)
REFUSED: dict[str, tuple[dict, list[str], list[str]]] = {
    "gpt2-no-q_proj": (GPT2, [], ["`model_type` 'gpt2'", "cannot adapt", "'llama'"]),
    "falcon-no-q_proj": (FALCON, [], ["`model_type` 'falcon'", "cannot adapt"]),
    "t5-encoder-decoder": (T5, [], ["encoder-decoder", "`is_encoder_decoder`"]),
    "bart-encoder-decoder": (BART, [], ["encoder-decoder"]),
    "llava-wrapper": (LLAVA, [], ["`model_type` 'llava'"]),
    "missing-sizes": (NO_SIZES, [], ["lacks `hidden_size`, `intermediate_size`", "own config.json"]),
    "no-model-type": (NO_MODEL_TYPE, [], ["no `model_type`"]),
    "phi3-q_proj": (PHI3_MINI, ["--target-modules", "q_proj", "v_proj"], ["`q_proj`", "Phi-3", "fuses", "`qkv_proj`"]),
    "mixtral-mlp": (MIXTRAL, ["--target-modules", "q_proj", "gate_proj"], ["`gate_proj`", "mixture of experts"]),
}


def write_config(folder: Path, config: dict) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def init_hypernet(model: Path, output: Path, *extra: str) -> int:
    return cli(["init-hypernet", "--model", str(model), "--latent-size", "16", "--head-in-size", "16", *extra, "-o", str(output)])


@pytest.mark.parametrize("case", REFUSED)
def test_init_hypernet_refuses_with_the_reason(case, tmp_path, capsys):
    config, extra, fragments = REFUSED[case]
    assert init_hypernet(write_config(tmp_path / "base", config), tmp_path / "hn", *extra) == 2
    err = capsys.readouterr().err
    for fragment in fragments:
        assert fragment in err
    assert not (tmp_path / "hn").exists()


@pytest.mark.parametrize("case", ["gpt2-no-q_proj", "t5-encoder-decoder", "missing-sizes", "phi3-q_proj"])
def test_serve_refuses_before_vllm_starts(case, tmp_path):
    """Through the real command: exit status 2 and the reason as its only error, no vLLM start-up."""
    assert init_hypernet(write_config(tmp_path / "llama", LLAMA), tmp_path / "hn") == 0
    config, _, fragments = REFUSED[case]
    bad = write_config(tmp_path / "bad", config)
    done = subprocess.run(
        [sys.executable, "-m", "t2l_vllm", "serve", "--model", str(bad), "--hypernet", str(tmp_path / "hn")],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("t2l-vllm serve: error: ")
    for fragment in fragments:
        assert fragment in last
    assert "vllm" not in done.stdout.lower() + "\n".join(done.stderr.splitlines()[:-1]).lower()


def test_import_reference_refuses_a_fused_base(tmp_path, capsys):
    """A q_proj/v_proj reference checkpoint cannot serve Phi-3, whose layers fuse them into qkv_proj."""
    shapes = BaseModelShapes.from_hf_config(LLAMA)
    source = write_reference_checkpoint(tmp_path / "ref", 2, {m: shapes.module_shape(m) for m in ("q_proj", "v_proj")})
    phi3 = write_config(tmp_path / "phi3", {**PHI3_MINI, "num_hidden_layers": 2, "hidden_size": 256, "num_attention_heads": 4, "num_key_value_heads": 4})
    assert cli(["import-reference", str(source), "--model", str(phi3), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "`q_proj` is not a layer projection of Phi-3" in err and "`qkv_proj`" in err
    assert not (tmp_path / "out").exists()


def test_phi3_defaults_to_its_fused_qkv_proj(tmp_path, capsys):
    assert init_hypernet(write_config(tmp_path / "phi3", PHI3_MINI), tmp_path / "hn") == 0
    assert "for qkv_proj to" in capsys.readouterr().out
    config = json.loads((tmp_path / "hn" / "config.json").read_text())
    assert config["lora"]["target_modules"] == ["qkv_proj"]


def test_fused_shapes_are_the_concatenations():
    """Phi-3-mini's real weights: qkv_proj [9216, 3072], gate_up_proj [16384, 3072]."""
    phi3 = BaseModelShapes.from_hf_config(PHI3_MINI)
    assert (phi3.module_shape("qkv_proj").in_features, phi3.module_shape("qkv_proj").out_features) == (3072, 9216)
    assert (phi3.module_shape("gate_up_proj").in_features, phi3.module_shape("gate_up_proj").out_features) == (3072, 16384)


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_every_family_lists_only_modules_it_can_shape(model_type):
    architecture = ARCHITECTURES[model_type]
    assert set(architecture.default_targets) <= set(architecture.modules) <= set(MODULE_FEATURES)
