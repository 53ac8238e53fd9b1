"""Makes a sentence-transformers encoder loaded under transformers 5 what its own code builds.

transformers 5 builds a model on the meta device and then fills in only what
the checkpoint holds. A buffer that a module makes in `__init__` with
`persistent=False` (rotary tables, a `position_ids` range) is never in a
checkpoint, so it is left as uninitialised memory unless the model's
`_init_weights` knows how to remake it. transformers' own models do; remote code
written for transformers 4 (gte-large-en-v1.5, the reference's task encoder)
does not, and then embeds every text alike or indexes out of bounds. The fix is
generic: build the same class from the same config with parameters on the meta
device and buffers real, which runs the module's own initialisation, and copy
every non-persistent buffer across.

transformers 5 also removed `get_extended_attention_mask`, which encoders of the
transformers 4 era call in `forward`; `supply_extended_attention_mask` gives a
model that lacks it transformers 4's encoder behaviour.
"""

from __future__ import annotations

import types

import torch
from torch import nn


def transformer_models(model: nn.Module) -> list[nn.Module]:
    """The outermost transformers models inside `model` (a sentence-transformers pipeline)."""
    from transformers import PreTrainedModel

    found: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if isinstance(module, PreTrainedModel) and not any(name.startswith(f"{outer}.") for outer in found):
            found[name] = module
    return list(found.values())


def non_persistent_buffers(model: nn.Module) -> list[str]:
    """Names of the buffers that `state_dict` leaves out, and so no checkpoint holds."""
    names = []
    for module_name, module in model.named_modules():
        for buffer_name in module._non_persistent_buffers_set:
            if module._buffers.get(buffer_name) is not None:
                names.append(f"{module_name}.{buffer_name}" if module_name else buffer_name)
    return names


def rebuild_unsaved_buffers(model: nn.Module) -> list[str]:
    """Overwrites every non-persistent buffer of a transformers model with what its `__init__` makes.

    Returns the names rebuilt. The fresh buffers come from `type(model)(model.config)`
    built with parameters on the meta device (no weights are allocated), and keep
    the device and dtype the loaded model gave them.
    """
    from accelerate import init_empty_weights

    names = non_persistent_buffers(model)
    if not names:
        return []
    with init_empty_weights(include_buffers=False):
        skeleton = type(model)(model.config)
    with torch.no_grad():
        for name in names:
            module_name, _, buffer_name = name.rpartition(".")
            owner = model.get_submodule(module_name)
            old = owner._buffers[buffer_name]
            owner._buffers[buffer_name] = skeleton.get_buffer(name).to(device=old.device, dtype=old.dtype)
    return names


def extended_attention_mask(self: nn.Module, attention_mask: torch.Tensor, input_shape: object = None,
                            device: object = None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """transformers 4's `get_extended_attention_mask` for an encoder (no causal part).

    (B, T) or (B, T, T) of 1 (attend) / 0 (masked) -> (B, 1, 1, T) or (B, 1, T, T) additive:
    0 where attended, the dtype's minimum where masked.
    """
    dtype = dtype or next(self.parameters()).dtype
    if attention_mask.dim() == 3:
        extended = attention_mask[:, None, :, :]
    elif attention_mask.dim() == 2:
        extended = attention_mask[:, None, None, :]
    else:
        raise ValueError(f"attention mask of shape {tuple(attention_mask.shape)} (input {input_shape}): expected 2 or 3 dimensions.")
    extended = extended.to(dtype)
    return (1.0 - extended) * torch.finfo(dtype).min


def supply_extended_attention_mask(model: nn.Module) -> bool:
    """Gives `model` transformers 4's `get_extended_attention_mask` if its class has none; True if it did."""
    if hasattr(model, "get_extended_attention_mask"):
        return False
    model.get_extended_attention_mask = types.MethodType(extended_attention_mask, model)
    return True


def repair_loaded_encoder(model: nn.Module) -> None:
    """Applies both repairs to every transformers model inside a loaded sentence-transformers pipeline."""
    for inner in transformer_models(model):
        rebuild_unsaved_buffers(inner)
        supply_extended_attention_mask(inner)
