"""The one module that touches vLLM's private internals; pinned to the tested release.

vLLM 0.32's CPU LoRA ops (`vllm/lora/ops/torch_ops/lora_ops.py`) gather adapter
weights with `weights[lora_indices]`, where -1 marks a token without LoRA. Python
indexing turns -1 into the last adapter slot, so a request without an adapter,
batched beside adapter requests, silently gets the adapter in the last slot
applied (vLLM's Triton kernels skip -1; upstream PRs #48421 and #49656 fix the CPU
ops). This project batches base and adapter requests all the time, so it installs
a fix: the shrink step writes zeros for -1 rows, hence the expand step adds
B @ 0 = 0 to them, and rows with an adapter are computed exactly as before.

It also prunes vLLM's `vllm:lora_requests_info` gauge, whose label sets (adapter
names) would otherwise grow with every new description.

`tests/integration/test_vllm_contract.py` fails loudly if vLLM changes the
functions patched or the metric pruned here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

logger = logging.getLogger(__name__)

TESTED_VLLM = "0.32."
_PATCHED_FLAG = "_t2l_skips_no_lora_rows"


def masked_bgmv_shrink(original: Callable[..., None]) -> Callable[..., None]:
    """Wraps vLLM's `bgmv_shrink` so rows whose LoRA index is -1 come out as zeros."""

    def bgmv_shrink(inputs, lora_a_weights, output_tensor, lora_indices_tensor, scaling: float = 1.0):
        no_lora = lora_indices_tensor < 0
        if not bool(no_lora.any()):
            return original(inputs, lora_a_weights, output_tensor, lora_indices_tensor, scaling)
        original(inputs, lora_a_weights, output_tensor, lora_indices_tensor.clamp_min(0), scaling)
        rows = output_tensor.shape[0]
        mask = no_lora if no_lora.shape[0] == rows else no_lora[:rows]
        output_tensor[mask] = 0
        return None

    setattr(bgmv_shrink, _PATCHED_FLAG, True)
    return bgmv_shrink


def install_cpu_lora_fix() -> bool:
    """Patches the CPU LoRA shrink op once per process; returns whether a patch is in place."""
    import vllm
    from vllm.lora.ops.torch_ops import lora_ops
    from vllm.lora.punica_wrapper import punica_cpu

    if getattr(lora_ops.bgmv_shrink, _PATCHED_FLAG, False):
        return True
    if not vllm.__version__.startswith(TESTED_VLLM):
        logger.warning(
            "t2l_vllm's CPU LoRA fix is tested on vLLM %s*, found %s: not installed; base-model requests "
            "batched beside adapters may be wrong on CPU.", TESTED_VLLM, vllm.__version__,
        )
        return False
    patched = masked_bgmv_shrink(lora_ops.bgmv_shrink)
    # sgmv_shrink calls bgmv_shrink through lora_ops' globals; PunicaWrapperCPU imported the name.
    lora_ops.bgmv_shrink = patched
    punica_cpu.bgmv_shrink = patched
    return True


def last_slot_leaks_into_no_lora_rows(shrink: Callable[..., None]) -> bool:
    """Whether `shrink` lets a -1 row pick up the last adapter slot (the 0.32 CPU bug)."""
    weights = torch.ones(2, 1, 3, 4)  # (slots, 1, rank, in)
    inputs = torch.ones(2, 4)
    out = torch.zeros(2, 3)
    shrink(inputs, weights, out, torch.tensor([0, -1]), 1.0)
    return bool(out[1].abs().sum() > 0)


LORA_INFO_METRIC = "vllm:lora_requests_info"


def prune_lora_info_series(keep: int = 1, registry=None) -> int:
    """Drops all but the newest `keep` series of vLLM's `vllm:lora_requests_info`.

    vLLM labels that gauge with the names of the running and waiting adapters and
    never removes a label set, so with one adapter per description /metrics (and
    the API server's memory) would grow without bound. Each series' value is the
    time it was last set; the newest ones are what a scrape needs. Returns how
    many series were removed.
    """
    from prometheus_client import REGISTRY

    gauge = (registry or REGISTRY)._names_to_collectors.get(LORA_INFO_METRIC)
    if gauge is None or not hasattr(gauge, "_metrics"):
        return 0
    with gauge._lock:
        series = sorted(gauge._metrics.items(), key=lambda item: item[1]._value.get(), reverse=True)
    stale = [labels for labels, _ in series[keep:]]
    for labels in stale:
        gauge.remove(*labels)
    return len(stale)
