"""Per-example adapters applied by hooks equal PEFT, and equal separate forward passes."""

from __future__ import annotations

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from t2l_vllm.train.functional_lora import applied_loras

DESCRIPTIONS = ["Reverse the letters of each word.", "Sort the words alphabetically.", "Count the words."]


def stacked(adapters, module):
    A, B = zip(*(a.matrices(module) for a in adapters))
    return torch.stack(A), torch.stack(B)  # (N, layers, r, in), (N, layers, out, r)


def test_one_batch_with_per_example_adapters_equals_separate_passes_and_peft(generator, default_paths, tmp_path):
    adapters = generator.generate(DESCRIPTIONS)
    base = AutoModelForCausalLM.from_pretrained(default_paths.base_model, dtype=torch.float32).eval()
    ids = torch.randint(3, 250, (3, 12), generator=torch.Generator().manual_seed(0))
    scaling = adapters[0].lora.scaling
    weights = {m: stacked(adapters, m) for m in adapters[0].lora.target_modules}
    with torch.no_grad(), applied_loras(base, weights, scaling):
        batched = base(ids).logits
    for n, adapter in enumerate(adapters):
        single = {m: stacked([adapter], m) for m in adapter.lora.target_modules}
        with torch.no_grad(), applied_loras(base, single, scaling):
            alone = base(ids[n : n + 1]).logits
        torch.testing.assert_close(batched[n : n + 1], alone, rtol=1e-5, atol=1e-5)
        peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(default_paths.base_model, dtype=torch.float32), str(adapter.save_peft(tmp_path / adapter.name))).eval()
        with torch.no_grad():
            torch.testing.assert_close(peft(ids[n : n + 1]).logits, alone, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        plain = base(ids).logits  # hooks are gone after the block
    assert not torch.allclose(plain, batched)


def test_gradients_reach_the_adapter_weights(generator, default_paths):
    adapter = generator.generate(DESCRIPTIONS[:1])[0]
    base = AutoModelForCausalLM.from_pretrained(default_paths.base_model, dtype=torch.float32)
    base.requires_grad_(False)
    A, B = (t.clone().requires_grad_(True) for t in stacked([adapter], "q_proj"))
    with applied_loras(base, {"q_proj": (A, B)}, adapter.lora.scaling):
        base(torch.tensor([[5, 6, 7, 8]])).logits.sum().backward()
    assert A.grad is not None and B.grad is not None and B.grad.abs().sum() > 0
