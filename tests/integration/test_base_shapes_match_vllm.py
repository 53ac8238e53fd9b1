"""Generated adapters have the shapes vLLM's own model definitions give, from config.json alone.

`t2l_vllm.vllm_plugin.model_shapes` builds each base with vLLM on the meta device (no weights)
and lists the [in, out] vLLM's LoRA manager gives every target module of every
layer. Against that:
- the three reference bases (their config.json in tests/data/reference_bases):
  a reference checkpoint written at vLLM's shapes, imported with `t2l-vllm
  import-reference --model`, generates only matrices vLLM accepts, so a user with
  the real weights meets no shape error at serve time;
- every base here (reference and tiny families): t2l_vllm's shape for each module
  its layers have is vLLM's.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from t2l_vllm.adapters import peft_key
from t2l_vllm.cli import main as cli
from t2l_vllm.hypernet.checkpoint import load_checkpoint
from t2l_vllm.hypernet.shapes import ModuleShape, load_base_shapes
from t2l_vllm.testing.reference_checkpoint import EMBEDDING_DIM, write_reference_checkpoint
from t2l_vllm.testing.tiny_models import TINY_FAMILIES, build_tiny_model
from t2l_vllm.vllm_plugin.model_shapes import vllm_shapes as shapes_from_vllm

REFERENCE_BASES = Path(__file__).parents[1] / "data" / "reference_bases"
REFERENCE_NAMES = sorted(p.name for p in REFERENCE_BASES.iterdir())
REFERENCE_TARGETS = ("q_proj", "v_proj")  # what every released reference checkpoint targets
PEFT_PREFIX = "base_model.model."


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Path]:
    """Base folders by name: the reference bases' config.json, and the tiny families."""
    root = tmp_path_factory.mktemp("tiny")
    tiny = {family: build_tiny_model(family, root / family) for family in TINY_FAMILIES}
    return {**{name: REFERENCE_BASES / name for name in REFERENCE_NAMES}, **tiny}


@pytest.fixture(scope="module")
def vllm_shapes(bases, tmp_path_factory) -> dict[str, dict[str, list[int]]]:
    """{base name: {"model.layers.{i}.self_attn.q_proj": [in, out], ...}} from vLLM's model classes."""
    by_dir = shapes_from_vllm([str(folder) for folder in bases.values()])
    return {name: by_dir[str(folder)] for name, folder in bases.items()}


def module_name(key: str) -> str:
    """A PEFT key's module, as vLLM names it: `model.layers.0.self_attn.q_proj`."""
    return key.removeprefix(PEFT_PREFIX).rsplit(".lora_", 1)[0]


@pytest.mark.parametrize("base", REFERENCE_NAMES)
def test_imported_reference_checkpoint_generates_what_vllm_expects(base, vllm_shapes, tmp_path):
    expected = vllm_shapes[base]
    layer0 = {m: ModuleShape(*expected[module_name(peft_key(0, m, "A"))]) for m in REFERENCE_TARGETS}
    layers = load_base_shapes(REFERENCE_BASES / base).num_layers
    source = write_reference_checkpoint(tmp_path / "reference", layers, layer0)
    assert cli(["import-reference", str(source), "--model", str(REFERENCE_BASES / base), "-o", str(tmp_path / "t2l")]) == 0

    hypernet, _ = load_checkpoint(tmp_path / "t2l")
    with torch.no_grad():
        weights = hypernet(torch.randn(2, EMBEDDING_DIM))  # {module: A (N, L, r, in), B (N, L, out, r)}
    rank = hypernet.config.lora.rank
    checked = set()
    for module, w in weights.items():
        for layer in range(w.A.shape[1]):
            name = module_name(peft_key(layer, module, "A"))
            d_in, d_out = expected[name]
            assert tuple(w.A[0, layer].shape) == (rank, d_in), f"{name}.lora_A"
            assert tuple(w.B[0, layer].shape) == (d_out, rank), f"{name}.lora_B"
            checked.add(name)
    vllm_targets = {n for n in expected if n.rsplit(".", 1)[1] in REFERENCE_TARGETS}
    assert checked == vllm_targets  # every layer, no more and no fewer than vLLM has


@pytest.mark.parametrize("base", [*REFERENCE_NAMES, *sorted(TINY_FAMILIES)])
def test_every_module_shape_is_vllms(base, bases, vllm_shapes):
    shapes = load_base_shapes(bases[base])
    expected = vllm_shapes[base]
    for module in shapes.architecture.modules:
        ours = shapes.module_shape(module)
        for layer in range(shapes.num_layers):
            name = module_name(peft_key(layer, module, "A"))
            assert name in expected, f"vLLM's {base} has no LoRA target `{name}`"
            assert [ours.in_features, ours.out_features] == expected[name], name
