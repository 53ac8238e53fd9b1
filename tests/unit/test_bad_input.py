"""Bad input gets a clear error that names the problem; the CLI exits non-zero without a traceback."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from t2l_vllm.adapters import check_adapter
from t2l_vllm.errors import AdapterCheckError, CheckpointError, InvalidDescriptionError, ShapeMismatchError
from t2l_vllm.hypernet.checkpoint import load_checkpoint
from t2l_vllm.hypernet.shapes import check_shapes_fit, load_base_shapes


@pytest.mark.parametrize(
    "description,fragment",
    [
        ("", "empty"),
        ("   \n\t ", "empty"),
        ("x" * 5000, "5000 characters; the limit is 2048"),
        (42, "must be a string, got int"),
        (None, "must be a string, got NoneType"),
        (["a list"], "item 0 of the mix must be"),  # a list is a mix of descriptions
        ("Summarise \ud800 news.", "not valid Unicode text"),  # a lone surrogate, as JSON's \\ud800 decodes
    ],
)
def test_bad_descriptions_are_refused_by_the_python_api(generator, description, fragment):
    with pytest.raises(InvalidDescriptionError, match=fragment):
        generator.generate([description])


def test_a_bad_description_does_not_fail_the_rest_of_its_batch(generator):
    good, bad = generator.generate_batch(["Summarise news articles.", ""])
    assert good.name.startswith("t2l-")
    assert isinstance(bad, InvalidDescriptionError)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "t2l_vllm", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["generate", "-o", "{tmp}/out", "   "], "task description is empty"),
        (["generate", "-o", "{tmp}/out", "y" * 3000], "3000 characters; the limit is 2048"),
        (["generate", "-o", "{tmp}/out", "--max-description-chars", "10", "a longer description"], "the limit is 10"),
        (["info", "--hypernet", "{tmp}/missing"], "does not exist"),
        (["init-hypernet", "--model", "{tmp}/nowhere", "-o", "{tmp}/h"], "cannot read config.json"),
        (["init-hypernet", "--model", "{tmp}/base", "--rank", "0", "-o", "{tmp}/h"], "`rank` must be positive, got 0"),
        (["init-hypernet", "--model", "{tmp}/base", "--target-modules", "lm_head", "-o", "{tmp}/h"], "unsupported ['lm_head']"),
    ],
)
def test_cli_errors_are_one_clear_line(tmp_path, default_paths, args, fragment):
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "config.json").write_text((default_paths.base_model / "config.json").read_text())
    result = run_cli(*[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert result.returncode == 2
    assert fragment in result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture()
def checkpoint_copy(default_paths, tmp_path):
    import shutil

    return shutil.copytree(default_paths.hypernet, tmp_path / "hypernet")


@pytest.mark.parametrize(
    "damage,fragment",
    [
        (lambda d: (d / "model.safetensors").unlink(), "has no model.safetensors"),
        (lambda d: (d / "config.json").unlink(), "has no config.json"),
        (lambda d: (d / "config.json").write_text("{not json"), "is not valid JSON"),
        (lambda d: (d / "model.safetensors").write_bytes(b"\x00" * 64), "is corrupt"),
        (lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:-1000]), "is corrupt"),
        (lambda d: _flip_a_weight(d / "model.safetensors"), "does not match the fingerprint"),
        (lambda d: _edit_config(d, variant="Q"), "`variant` must be one of"),
        (lambda d: _edit_config(d, latent_size=32), "has shape"),
    ],
)
def test_missing_or_corrupt_checkpoint_files_are_named(checkpoint_copy, damage, fragment):
    damage(checkpoint_copy)
    with pytest.raises(CheckpointError, match=fragment):
        load_checkpoint(checkpoint_copy)


def _flip_a_weight(path):
    from safetensors.torch import load_file, save_file

    state = load_file(str(path))
    state["heads.q_proj.bias"][0] += 1.0
    save_file(state, str(path), {"format": "t2l_vllm.hypernet/1"})


def _edit_config(folder, **changes):
    doc = json.loads((folder / "config.json").read_text())
    doc.update(changes)
    (folder / "config.json").write_text(json.dumps(doc))


def test_hypernetwork_that_does_not_fit_the_base_model(generator, tmp_path):
    expected = generator.config.base
    config = json.loads(open(expected.name + "/config.json").read())
    config["num_key_value_heads"] *= 2  # v_proj twice as wide
    config["num_hidden_layers"] += 1
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ShapeMismatchError) as err:
        check_shapes_fit(expected, load_base_shapes(tmp_path), ["q_proj", "v_proj"])
    v = expected.module_shape("v_proj")
    assert f"layers: hypernetwork has {expected.num_layers}, base model has {expected.num_layers + 1}" in str(err.value)
    assert f"v_proj: hypernetwork makes [{v.in_features} -> {v.out_features}], base model has [{v.in_features} -> {2 * v.out_features}]" in str(err.value)


def test_non_finite_and_oversized_adapters_are_refused(generator):
    from t2l_vllm.adapters import LoRAAdapter

    adapter = generator.generate(["Extract names of people from text."])[0]
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"
    nan = LoRAAdapter(adapter.name, adapter.lora, {**adapter.tensors, key: torch.full_like(adapter.tensors[key], float("nan"))})
    with pytest.raises(AdapterCheckError, match="NaN or infinity"):
        check_adapter(nan)
    huge = LoRAAdapter(adapter.name, adapter.lora, {**adapter.tensors, key: adapter.tensors[key] * 1e6})
    with pytest.raises(AdapterCheckError, match=r"above the bound 1000 \(`max_delta_norm`\)"):
        check_adapter(huge)
    check_adapter(adapter)


def test_generator_refuses_adapters_over_the_norm_bound(default_paths):
    from t2l_vllm.generator import AdapterGenerator, GeneratorSettings

    strict = AdapterGenerator.from_checkpoint(default_paths.hypernet, GeneratorSettings(max_delta_norm=1e-3))
    with pytest.raises(AdapterCheckError, match="above the bound 0.001"):
        strict.generate(["Summarise news articles."])
