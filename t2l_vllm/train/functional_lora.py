"""Per-example LoRA adapters on a frozen transformers model, applied by forward hooks.

Training a hypernetwork end to end needs a different adapter for every example of
a batch, regenerated at every step. Re-wrapping the model with PEFT per step is
slow and keeps one adapter per module; instead, each target projection gets a
hook that adds `scaling * B_n @ A_n @ x_n` for example n, with gradients flowing
into A and B (and so into the hypernetwork). Outputs equal PEFT's for the same
weights (tested).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn

from ..adapters import parent_block

Tensor = torch.Tensor


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of a causal LM (`model.model.layers` in Llama-style models)."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    return decoder.layers


@contextmanager
def applied_loras(
    model: nn.Module,
    weights: Mapping[str, tuple[Tensor, Tensor]],
    scaling: float,
    dropout: float = 0.0,
) -> Iterator[None]:
    """Within the block, every forward of `model` adds one LoRA per batch element.

    weights: module name -> (A (N, layers, r, in), B (N, layers, out, r)), where N is
    the batch size of the forward (use `expand` for one adapter shared by a batch).
    `dropout` applies to the LoRA input, as PEFT's lora_dropout; pass 0 to evaluate.
    """
    handles = []
    try:
        for module, (A, B) in weights.items():
            for i, layer in enumerate(decoder_layers(model)):
                linear = getattr(getattr(layer, parent_block(module)), module)
                handles.append(linear.register_forward_hook(_lora_hook(A[:, i], B[:, i], scaling, dropout)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _lora_hook(A: Tensor, B: Tensor, scaling: float, dropout: float):
    def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
        x = nn.functional.dropout(inputs[0], dropout) if dropout else inputs[0]  # (N, T, in)
        down = torch.einsum("nti,nri->ntr", x.to(A.dtype), A)  # (N, T, r)
        return output + scaling * torch.einsum("ntr,nor->nto", down, B).to(output.dtype)  # (N, T, out)

    return hook
