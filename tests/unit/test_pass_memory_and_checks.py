"""The generator's fast paths give what the plain computation gives: reused output memory,
column-sliced heads, one-thread small steps, and the float32 weight check with its float64 fallback."""

from __future__ import annotations

import math

import pytest
import torch

from t2l_vllm.adapters import check_weights, checked_delta_norms, delta_norms
from t2l_vllm.errors import AdapterCheckError, ConfigError
from t2l_vllm.generator import AdapterGenerator, GeneratorSettings
from t2l_vllm.hypernet.config import EncoderSettings, HypernetConfig, OutputTransform
from t2l_vllm.hypernet.model import Workspace, build_hypernet, one_thread_below
from t2l_vllm.hypernet.shapes import BaseModelShapes


def config(variant: str, **changes) -> HypernetConfig:
    base = BaseModelShapes.from_hf_config(  # v_proj 64 -> 32: A and B of different widths
        dict(model_type="llama", num_hidden_layers=3, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=96)
    )
    return HypernetConfig(base=base, variant=variant, latent_size=16, head_in_size=24, encoder=EncoderSettings(dim=32),
                          head_init="random", **changes)


def randomise_buffers(model: torch.nn.Module) -> None:
    generator = torch.Generator().manual_seed(1)
    for buffer in model.buffers():
        buffer.copy_(torch.rand(buffer.shape, generator=generator) + 0.5)


@pytest.mark.parametrize("variant", ["L", "M", "S"])
@pytest.mark.parametrize("output", [OutputTransform(), OutputTransform(zscore=True, offset=True, scale=0.5)])
def test_a_pass_into_a_workspace_equals_a_plain_pass_and_the_grad_pass(variant, output):
    model = build_hypernet(config(variant, output=output), seed=2)
    randomise_buffers(model)
    emb = torch.randn(3, 32, generator=torch.Generator().manual_seed(0))
    workspace = Workspace()
    with torch.no_grad():
        plain = model(emb)
        reused = {m: (w.A.clone(), w.B.clone()) for m, w in model(emb, workspace).items()}
        again = model(emb, workspace)  # the same memory, written again
    graded = model(emb)  # autograd on: the training path, slicing through views of the weights
    for module, w in plain.items():
        for got in (reused[module], (again[module].A, again[module].B), (graded[module].A.detach(), graded[module].B.detach())):
            torch.testing.assert_close(got[0], w.A, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(got[1], w.B, rtol=1e-5, atol=1e-6)
    assert workspace.nbytes > 0
    loss = sum(w.A.square().sum() + w.B.square().sum() for w in graded.values())
    loss.backward()
    assert all(head.weight.grad is not None and head.weight.grad.abs().sum() > 0 for head in model.heads.values())


def test_the_workspace_grows_and_then_reuses_its_memory():
    workspace, like = Workspace(), torch.zeros(1)
    small = workspace.take("x", (2, 3), like)
    big = workspace.take("x", (4, 5), like)
    again = workspace.take("x", (3, 3), like)
    assert small.shape == (2, 3) and big.shape == (4, 5) and again.shape == (3, 3)
    assert again.data_ptr() == big.data_ptr() and workspace.nbytes == 20 * 4


def test_one_thread_below_restores_the_thread_count_and_keeps_autograd_work_threaded():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch.no_grad(), one_thread_below(10):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with torch.no_grad(), one_thread_below(10**12):
            assert torch.get_num_threads() == 2
        with one_thread_below(10):  # autograd on: training keeps its threads
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


def test_adapters_own_their_memory_across_passes():
    generator = AdapterGenerator(build_hypernet(config("L"), seed=0), None, "fingerprint")  # type: ignore[arg-type]
    first = generator.generate_from_embeddings(["a"], torch.randn(1, 32))[0]
    kept = {k: v.clone() for k, v in first.tensors.items()}
    generator.generate_from_embeddings(["b", "c"], torch.randn(2, 32))
    assert all(torch.equal(first.tensors[k], v) for k, v in kept.items())
    assert all(t.is_contiguous() for t in first.tensors.values())


# --- the weight check -----------------------------------------------------------------------------
def scaled_to(A: torch.Tensor, B: torch.Tensor, scaling: float, norm: float) -> torch.Tensor:
    """B rescaled so that the update's norm of layer 0 is `norm` (by float64)."""
    return B * (norm / float(delta_norms(A.double(), B.double(), scaling)[0]))


@pytest.mark.parametrize("relative", [1 - 1e-6, 1 - 1e-7, 1.0, 1 + 1e-7, 1 + 1e-6, 0.5, 2.0])
def test_float32_check_decides_as_float64_does_at_the_bound(relative):
    generator = torch.Generator().manual_seed(0)
    A, B = torch.randn(2, 8, 256, generator=generator), torch.randn(2, 128, 8, generator=generator)
    bound, scaling = 1000.0, 16 / math.sqrt(8)
    B = scaled_to(A, B, scaling, bound * relative).float()
    exact = delta_norms(A.double(), B.double(), scaling)
    checked = checked_delta_norms(A, B, scaling, bound)
    assert torch.equal(checked > bound, exact > bound)
    assert (check_weights(A, B, scaling, bound) is None) == bool((exact <= bound).all())


def test_float32_overflow_is_still_caught_and_measured_as_float64_measures_it():
    A = torch.full((1, 8, 64), 1e20)  # finite in float32; the Gram entries (6.4e41) overflow it
    B = torch.full((1, 64, 8), 1e20)
    exact = float(delta_norms(A.double(), B.double(), 2.0)[0])
    assert math.isfinite(exact)
    assert float(checked_delta_norms(A, B, 2.0, 1000.0)[0]) == pytest.approx(exact, rel=1e-12)
    assert "above the bound 1000" in check_weights(A, B, 2.0, 1000.0)
    assert check_weights(A, B, 2.0, 10 * exact) is None  # a bound above it: passed, as in float64


@pytest.mark.parametrize("where", ["A", "B"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weights_are_refused_by_name_even_beside_zero_rows(where, value):
    torch.manual_seed(0)
    model = build_hypernet(config("L"), seed=0)
    generator = AdapterGenerator(model, None, "fingerprint")  # type: ignore[arg-type]
    with torch.no_grad():
        A_part = model.rank * model.shapes["v_proj"].in_features
        bias = model.heads["v_proj"].bias
        bias[:A_part].fill_(0.0) if where == "B" else bias[A_part:].fill_(0.0)  # the other matrix's rows zero
        model.heads["v_proj"].weight.zero_()
        bias[0 if where == "A" else A_part] = value
    result = generator.generate_from_embeddings(["a"], torch.randn(1, 32))[0]
    assert isinstance(result, AdapterCheckError)
    assert "v_proj: its weights contain NaN or infinity" in str(result)


def test_thread_setting_is_checked_and_applied():
    with pytest.raises(ConfigError, match="`threads` must be 0"):
        GeneratorSettings(threads=-1)
    threads = torch.get_num_threads()
    try:
        GeneratorSettings(threads=1).apply_threads()
        assert torch.get_num_threads() == 1
        GeneratorSettings(threads=0).apply_threads()  # 0: left as it is
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
