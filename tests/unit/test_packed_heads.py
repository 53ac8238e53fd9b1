"""Packed head weights (oneDNN's layout) serve small inference passes with the numbers the dense
weights give, are used only while fresh, and never reach training or the state dict."""

from __future__ import annotations

import pytest
import torch
from torch.profiler import profile

from t2l_vllm.generator import AdapterGenerator, GeneratorSettings
from t2l_vllm.hypernet.config import EncoderSettings, HypernetConfig
from t2l_vllm.hypernet.model import Head, Workspace, build_hypernet
from t2l_vllm.hypernet.packed import PACKED_MAX_ROWS, packable
from t2l_vllm.hypernet.shapes import BaseModelShapes

pytestmark = pytest.mark.skipif(not packable(torch.zeros(1, 1)), reason="this torch has no oneDNN linear")

PACKED_OP = "mkldnn::_linear_pointwise"


def config(variant: str, layers: int = 3) -> HypernetConfig:
    base = BaseModelShapes.from_hf_config(  # v_proj 64 -> 32: A and B of different widths
        dict(model_type="llama", num_hidden_layers=layers, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=96)
    )
    return HypernetConfig(base=base, variant=variant, latent_size=16, head_in_size=24, encoder=EncoderSettings(dim=32),
                          head_init="random")


def embeddings(n: int) -> torch.Tensor:
    return torch.randn(n, 32, generator=torch.Generator().manual_seed(n))


def inference(model: torch.nn.Module, emb: torch.Tensor) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], set[str]]:
    """Every module's (A, B), copied out, and the names of the ops that ran."""
    with torch.inference_mode(), profile() as trace:
        weights = {m: (w.A.clone(), w.B.clone()) for m, w in model(emb, Workspace()).items()}
    return weights, {event.key for event in trace.key_averages()}


def assert_same(got: dict, want: dict) -> None:
    for module, (A, B) in want.items():
        torch.testing.assert_close(got[module][0], A, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got[module][1], B, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("variant", ["L", "M", "S"])
def test_a_small_pass_runs_on_the_packed_copies_and_gives_the_dense_numbers(variant):
    dense = build_hypernet(config(variant), seed=3)
    packed = build_hypernet(config(variant), seed=3)
    assert packed.pack_heads() > 0
    for n in (1, 2):
        want, dense_ops = inference(dense, embeddings(n))
        got, packed_ops = inference(packed, embeddings(n))
        assert_same(got, want)
        assert PACKED_OP not in dense_ops and PACKED_OP in packed_ops


def test_a_pass_of_more_rows_than_the_packed_limit_runs_on_the_dense_weights():
    model = build_hypernet(config("L"), seed=3)
    model.pack_heads()
    many = PACKED_MAX_ROWS // 3 + 1  # 3 layers: one row per layer and description
    got, ops = inference(model, embeddings(many))
    assert PACKED_OP not in ops
    want, _ = inference(build_hypernet(config("L"), seed=3), embeddings(many))
    assert_same(got, want)


def test_heads_whose_single_pass_is_too_big_are_not_packed():
    # S sends rank rows per layer through its head: 8 x 16 layers = 128 rows for one description.
    model = build_hypernet(config("S", layers=16), seed=3)
    assert model.pack_heads() == 0
    assert all(head._packed is None for head in model.heads.values())


@pytest.mark.parametrize("change", ["in place", "load_state_dict", "new tensor"])
def test_a_weight_changed_after_packing_is_what_the_pass_uses(change):
    model = build_hypernet(config("L"), seed=3)
    model.pack_heads()
    head: Head = model.heads["q_proj"]
    new = torch.randn_like(head.weight)
    with torch.no_grad():
        if change == "in place":
            head.weight.copy_(new)
        elif change == "load_state_dict":
            model.load_state_dict({**model.state_dict(), "heads.q_proj.weight": new})
        else:
            head.weight = torch.nn.Parameter(new)
    assert head.packed_weight(1) is None
    reference = build_hypernet(config("L"), seed=3)
    with torch.no_grad():
        reference.heads["q_proj"].weight.copy_(new)
    got, _ = inference(model, embeddings(1))
    want, _ = inference(reference, embeddings(1))
    assert_same(got, want)


def test_training_never_uses_the_packed_copies_and_the_state_dict_does_not_hold_them():
    model = build_hypernet(config("L"), seed=3)
    keys = set(model.state_dict())
    model.pack_heads()
    assert set(model.state_dict()) == keys
    with profile() as trace:
        out = model(embeddings(1))
        sum(w.A.square().sum() + w.B.square().sum() for w in out.values()).backward()
    assert PACKED_OP not in {event.key for event in trace.key_averages()}
    assert all(head.weight.grad is not None and head.weight.grad.abs().sum() > 0 for head in model.heads.values())


def test_the_generator_packs_by_its_setting_and_only_float32():
    assert AdapterGenerator(build_hypernet(config("L")), None, "packed").hypernet.heads["q_proj"]._packed is not None  # type: ignore[arg-type]
    off = AdapterGenerator(build_hypernet(config("L")), None, "dense", GeneratorSettings(pack_heads=False))  # type: ignore[arg-type]
    assert all(head._packed is None for head in off.hypernet.heads.values())
    assert build_hypernet(config("L")).to(torch.bfloat16).pack_heads() == 0
