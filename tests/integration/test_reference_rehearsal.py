"""A rehearsal of the path real users take, at Mistral-7B-Instruct-v0.2's shapes, as far as a CPU allows.

What a user has: a released reference run (`hypermod.pt`, `args.yaml`,
`adapter_config.json` with `use_rslora: true`), gte-large-en-v1.5 in the Hugging
Face cache, and the base model's folder. Here: a reference run written in the
reference's layout at Mistral-7B's shapes (random weights), a gte-architecture
encoder 1024 wide saved as the release is and cached under gte's hub id, and a
base folder with Mistral's config.json and random q/v weights at their real
shapes. The commands run as a user runs them, in processes of their own, offline:
`import-reference`, `info`, `check` (encoder self-check, calibration, strength
against the base weights, shapes against vLLM's MistralForCausalLM built on the
meta device). Not exercised: the base model's other weights and a real engine
at these shapes (28 GB), so no request is served at 7B here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from t2l_vllm.encoder import GTE_LARGE
from t2l_vllm.hypernet.shapes import load_base_shapes
from t2l_vllm.strength import base_weight_key
from t2l_vllm.testing.reference_checkpoint import write_reference_checkpoint
from t2l_vllm.testing.tiny_gte import install_in_hub_cache, write_tiny_gte

pytestmark = pytest.mark.engine

MISTRAL = Path(__file__).parents[1] / "data" / "reference_bases" / "mistral-7b-instruct-v0.2"
TARGETS = ("q_proj", "v_proj")
# Scale of the random base weights: puts the random reference's adapters, at alpha/r, inside what trained
# LoRAs show, so that honouring its rsLoRA flag (2.83x) crosses the bound, as it does on the real model.
WEIGHT_STD = 0.045


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("rehearsal")
    base = root / "mistral-7b-instruct-v0.2"
    base.mkdir()
    shutil.copy(MISTRAL / "config.json", base / "config.json")
    shapes = load_base_shapes(base)
    generator = torch.Generator().manual_seed(0)
    weights = {}
    for layer in range(shapes.num_layers):
        for module in TARGETS:
            s = shapes.module_shape(module)
            weights[base_weight_key(layer, module)] = (torch.randn(s.out_features, s.in_features, generator=generator) * WEIGHT_STD).bfloat16()
    save_file(weights, str(base / "model.safetensors"))
    del weights

    encoder = write_tiny_gte(root / "gte-large-en-v1.5", hidden_size=1024, layers=1, heads=16)
    hub = root / "hub"
    install_in_hub_cache(encoder, GTE_LARGE, hub)
    reference = write_reference_checkpoint(root / "mistral_t2l", shapes.num_layers, {m: shapes.module_shape(m) for m in TARGETS})
    env = {**os.environ, "HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(root / "modules")}
    return {"root": root, "base": base, "encoder": encoder, "reference": reference, "env": env}


def t2l(world, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "t2l_vllm", *args], env=world["env"], capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def imported(world):
    out = world["root"] / "imported"
    done = t2l(world, "import-reference", str(world["reference"]), "--model", str(world["base"]), "-o", str(out))
    assert done.returncode == 0, done.stderr
    return out, done.stdout


def test_import_serves_at_the_published_calibration_and_records_the_encoder(world, imported):
    out, printed = imported
    assert "alpha/r = 2 (published: the reference's files say use_rslora=true (5.657, 2.83x stronger)" in printed
    config = json.loads((out / "config.json").read_text())
    assert (config["lora"]["use_rslora"], config["lora"]["calibration"]) == (False, "published")
    from t2l_vllm.encoder.identity import weights_sha256

    assert config["encoder"]["weights_sha256"] == weights_sha256(world["encoder"])  # hashed from the cache's copy
    info = t2l(world, "info", "--hypernet", str(out))
    assert info.returncode == 0 and "lora          r=8 alpha=16 rslora=False: alpha/r = 2 (published" in info.stdout


def test_check_passes_the_imported_run_at_real_shapes(world, imported):
    out, _ = imported
    done = t2l(world, "check", "--hypernet", str(out), "--model", str(world["base"]))
    assert done.returncode == 0, done.stdout + done.stderr
    for fragment in (f"encoder       ok: {GTE_LARGE} (1024-d, weights sha256", "scaling       ok: r=8 alpha=16 rslora=False",
                     "strength      ok: 4 probe adapters", "no training record",
                     "vllm shapes   ok: all 64 adapted projections match vLLM's model", "every check passed"):
        assert fragment in done.stdout, done.stdout


def test_the_flag_as_written_is_flagged_as_overdriven(world):
    out = world["root"] / "as_written"
    done = t2l(world, "import-reference", str(world["reference"]), "--model", str(world["base"]), "--rslora-as-written", "-o", str(out))
    assert done.returncode == 0, done.stderr
    checked = t2l(world, "check", "--no-vllm", "--hypernet", str(out), "--model", str(world["base"]))
    assert checked.returncode == 0 and "strength      warning: adapters' updates measure" in checked.stdout, checked.stdout
    assert t2l(world, "check", "--no-vllm", "--strict", "--hypernet", str(out), "--model", str(world["base"])).returncode == 1


def test_the_encoder_loads_from_a_local_folder_with_the_recorded_weights_only(world, imported):
    out, _ = imported
    local = t2l(world, "check", "--no-vllm", "--hypernet", str(out), "--model", str(world["base"]), "--encoder-path", str(world["encoder"]))
    assert local.returncode == 0, local.stdout + local.stderr
    other = write_tiny_gte(world["root"] / "other-gte", hidden_size=1024, layers=1, heads=16, seed=1)
    refused = t2l(world, "check", "--no-vllm", "--hypernet", str(out), "--encoder-path", str(other))
    assert refused.returncode == 2 and "are not the `Alibaba-NLP/gte-large-en-v1.5` the hypernetwork was trained with" in refused.stderr


def test_a_generated_adapter_loads_in_vllm_and_peft_at_alpha_over_r(world, imported, tmp_path):
    from peft import LoraConfig
    from vllm.lora.peft_helper import PEFTHelper

    from t2l_vllm.adapters import LoRAAdapter, peft_key
    from t2l_vllm.hypernet.checkpoint import load_checkpoint

    hypernet, _ = load_checkpoint(imported[0])
    with torch.no_grad():
        weights = hypernet(torch.randn(1, hypernet.config.encoder.dim))
    tensors = {peft_key(i, m, x): getattr(w, x)[0, i].contiguous() for m, w in weights.items() for i in range(w.A.shape[1]) for x in "AB"}
    folder = LoRAAdapter("rehearsal", hypernet.config.lora, tensors).save_peft(tmp_path / "adapter")
    assert PEFTHelper.from_local_dir(str(folder), max_position_embeddings=4096).vllm_lora_scaling_factor == pytest.approx(2.0)
    config = LoraConfig.from_pretrained(str(folder))
    assert (config.r, config.lora_alpha, config.use_rslora) == (8, 16, False)
