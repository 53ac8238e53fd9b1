"""Encoders load as their own code builds them, prove who they are, and pass a self-check, or are refused.

The reference's encoder (gte-large-en-v1.5) runs remote code of the transformers 4
era. `t2l_vllm.testing.tiny_gte` writes a small random model of its architecture,
saved as the release is (no non-persistent buffers in the file), which loads here
through remote code exactly as the real one does. Expected embeddings come from the
same modules built outside the meta device and run by hand.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from t2l_vllm.encoder import ENCODER_PRESETS, GTE_LARGE, TaskEncoder, add_full_stop, encoder_settings_for
from t2l_vllm.encoder.repair import extended_attention_mask, non_persistent_buffers
from t2l_vllm.encoder.self_check import COLLAPSED_COSINE, check_encoder
from t2l_vllm.errors import ConfigError
from t2l_vllm.testing.tiny_gte import build_gte_like, install_in_hub_cache, write_tiny_gte

WIDTH = 64
TEXTS = ["Answer multiple-choice science questions", "Reverse the letters of every word.", "Summarise the article in one line"]


def gte_settings(model: str, **changes):
    """The reference's GTE preset (CLS pooling, sqrt(dim) scale, remote code) at the tiny model's width."""
    return replace(ENCODER_PRESETS[GTE_LARGE], model=model, dim=WIDTH, **changes)


@pytest.fixture(scope="module")
def tiny_gte(tmp_path_factory) -> Path:
    return write_tiny_gte(tmp_path_factory.mktemp("gte") / "tiny-gte", hidden_size=WIDTH)


def expected_embeddings(folder: Path, texts: list[str], seed: int = 0) -> torch.Tensor:
    """The encoder's vectors computed with modules built outside the meta device, step by step."""
    from transformers import AutoTokenizer

    model = build_gte_like(hidden_size=WIDTH, seed=seed)
    model.load_state_dict(load_file(str(folder / "model.safetensors")))  # persistent tensors; buffers are __init__'s
    batch = AutoTokenizer.from_pretrained(str(folder))([add_full_stop(t) for t in texts], padding=True, return_tensors="pt")
    mask = (1.0 - batch["attention_mask"][:, None, None, :].float()) * torch.finfo(torch.float32).min
    with torch.no_grad():
        hidden, rope = model.embeddings(batch["input_ids"], torch.zeros_like(batch["input_ids"]))
        for layer in model.encoder.layer:
            hidden = layer(hidden, rope, mask)
    cls = hidden[:, 0]
    return torch.nn.functional.normalize(cls, dim=-1) * math.sqrt(WIDTH)


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_the_saved_folder_holds_no_non_persistent_buffer(tiny_gte):
    saved = set(load_file(str(tiny_gte / "model.safetensors")))
    unsaved = set(non_persistent_buffers(build_gte_like(hidden_size=WIDTH)))
    assert unsaved == {"embeddings.position_ids", "embeddings.rotary_emb.inv_freq",
                       "embeddings.rotary_emb.cos_cached", "embeddings.rotary_emb.sin_cached"}
    assert not saved & unsaved


def test_tiny_gte_by_folder_embeds_as_its_modules_built_outside_the_meta_device(tiny_gte):
    encoder = TaskEncoder(gte_settings(str(tiny_gte)))
    loaded = encoder._model[0].auto_model
    built = build_gte_like(hidden_size=WIDTH)
    for name in non_persistent_buffers(built):
        assert torch.equal(loaded.get_buffer(name), built.get_buffer(name)), name
    assert relative_difference(encoder.encode(TEXTS), expected_embeddings(tiny_gte, TEXTS)) <= 1e-4


def test_tiny_gte_by_hub_id_from_an_offline_cache(tiny_gte, tmp_path):
    """The release's own path: a hub id, the files in the Hugging Face cache, no network."""
    hub_cache = tmp_path / "hub"
    install_in_hub_cache(tiny_gte, GTE_LARGE, hub_cache)
    script = (
        "import json, sys\n"
        "from dataclasses import replace\n"
        "from t2l_vllm.encoder import ENCODER_PRESETS, GTE_LARGE, TaskEncoder\n"
        f"encoder = TaskEncoder(replace(ENCODER_PRESETS[GTE_LARGE], dim={WIDTH}))\n"
        f"print(json.dumps(encoder.encode({TEXTS!r}).tolist()))\n"
    )
    env = {**os.environ, "HF_HUB_CACHE": str(hub_cache), "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    by_id = torch.tensor(json.loads(done.stdout.strip().splitlines()[-1]))
    assert relative_difference(by_id, expected_embeddings(tiny_gte, TEXTS)) <= 1e-4


def test_the_self_check_sees_unrelated_texts_apart_and_paraphrases_close(tiny_gte):
    for encoder in (TaskEncoder(gte_settings(str(tiny_gte))), TaskEncoder(ENCODER_PRESETS[next(iter(ENCODER_PRESETS))])):
        result = encoder.self_check
        assert result.unrelated_max < COLLAPSED_COSINE
        assert result.paraphrase_mean > result.unrelated_mean


def test_an_encoder_that_embeds_every_text_alike_is_refused(tiny_gte, tmp_path):
    """Zero gains on the last norm: every text comes out as that norm's bias, one vector (the collapse
    the reference's encoder shows on a GPU under transformers 5)."""
    folder = write_tiny_gte(tmp_path / "collapsed", hidden_size=WIDTH)
    weights = load_file(str(folder / "model.safetensors"))
    weights["encoder.layer.1.mlp_ln.weight"] = torch.zeros(WIDTH)
    weights["encoder.layer.1.mlp_ln.bias"] = torch.randn(WIDTH)
    save_file(weights, str(folder / "model.safetensors"), {"format": "pt"})
    with pytest.raises(ConfigError, match="failed its self-check: unrelated texts embed at cosine 1.0000"):
        TaskEncoder(gte_settings(str(folder)))


def test_an_encoder_whose_own_code_makes_non_finite_buffers_is_refused(tmp_path):
    folder = write_tiny_gte(tmp_path / "theta0", hidden_size=WIDTH, rope_theta=0.0)  # 1 / 0**x: infinite frequencies
    with pytest.raises(ConfigError, match=r"embeddings.rotary_emb.inv_freq` holds NaN or infinity"):
        TaskEncoder(gte_settings(str(folder)))


@pytest.mark.parametrize("garbage, message", [
    (140640130114624, r"embeddings.position_ids` holds 1.406e\+14"),  # uninitialised memory, as transformers 5 leaves it
    (600, r"embedding probe texts raised IndexError"),  # past the rotary tables' 512 positions
])
def test_buffers_left_wrong_are_refused_with_a_message_not_an_index_error(tiny_gte, garbage, message):
    """A fake fault, named as one: the repair always runs on load, so the buffer is spoiled after it."""
    encoder = TaskEncoder(gte_settings(str(tiny_gte)))
    model = encoder._model
    model[0].auto_model.embeddings.position_ids.fill_(garbage)
    with pytest.raises(ConfigError, match=message):
        check_encoder("tiny-gte", model, encoder.encode)


def test_extended_attention_mask_is_transformers_4s_for_an_encoder():
    model = torch.nn.Linear(2, 2)
    mask2 = torch.tensor([[1, 1, 0]])
    out = extended_attention_mask(model, mask2, (1, 3))
    assert out.shape == (1, 1, 1, 3) and out[0, 0, 0, :2].eq(0).all() and out[0, 0, 0, 2] == torch.finfo(torch.float32).min
    mask3 = torch.ones(1, 3, 3)
    assert extended_attention_mask(model, mask3, (1, 3)).shape == (1, 1, 3, 3)
    with pytest.raises(ValueError, match="expected 2 or 3 dimensions"):
        extended_attention_mask(model, torch.ones(3), (3,))


# --- identity: a local folder stands in for the hub name only with the weights recorded -------------
def test_a_local_folder_is_the_encoder_when_its_weights_hash_to_the_recorded_ones(tiny_gte, tmp_path):
    settings = encoder_settings_for(GTE_LARGE, source=str(tiny_gte))
    assert settings.weights_sha256 == hashlib.sha256((tiny_gte / "model.safetensors").read_bytes()).hexdigest()
    settings = replace(settings, dim=WIDTH)
    by_folder = TaskEncoder(settings, source=str(tiny_gte))
    assert relative_difference(by_folder.encode(TEXTS), expected_embeddings(tiny_gte, TEXTS)) <= 1e-4

    other = write_tiny_gte(tmp_path / "other-weights", hidden_size=WIDTH, seed=1)
    with pytest.raises(ConfigError, match=r"are not the `Alibaba-NLP/gte-large-en-v1.5` the hypernetwork was trained with"):
        TaskEncoder(settings, source=str(other))
    with pytest.raises(ConfigError, match="records no hash of its weights"):
        TaskEncoder(replace(settings, weights_sha256=""), source=str(tiny_gte))


def test_an_encoder_without_a_preset_runs_its_remote_code_only_when_trusted(tiny_gte):
    with pytest.raises(ConfigError, match="cannot load task encoder"):
        encoder_settings_for("my-org/gte-like", source=str(tiny_gte))
    settings = encoder_settings_for("my-org/gte-like", source=str(tiny_gte), trust_remote_code=True)
    assert (settings.dim, settings.trust_remote_code) == (WIDTH, True)
    assert settings.weights_sha256 == hashlib.sha256((tiny_gte / "model.safetensors").read_bytes()).hexdigest()
