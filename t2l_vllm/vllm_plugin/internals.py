"""The one module that touches vLLM's private internals; pinned to the tested release.

vLLM 0.32's CPU LoRA ops (`vllm/lora/ops/torch_ops/lora_ops.py`) gather adapter
weights with `weights[lora_indices]`, where -1 marks a token without LoRA. Python
indexing turns -1 into the last adapter slot, so a request without an adapter,
batched beside adapter requests, silently gets the adapter in the last slot
applied (vLLM's Triton kernels skip -1; upstream PRs #48421 and #49656 fix the CPU
ops). This project batches base and adapter requests all the time, so it installs
a fix: the shrink step writes zeros for -1 rows, hence the expand step adds
B @ 0 = 0 to them, and rows with an adapter are computed exactly as before.

It also keeps vLLM's `vllm:lora_requests_info` gauge bounded: vLLM labels it with
the names of the running and waiting adapters, so with one adapter per
description every new description would add a series that is never removed (in
prometheus_client's multiprocess mode, used with several API servers, not even
`remove` can drop it from the files). The plugin summarises generated adapters
in those labels as a count.

And it stops vLLM's LoRA loader from leaking on every adapter it loads: the
loader reads each tensor with `safetensors.safe_open(...).get_tensor`, which
keeps about 56 bytes per tensor for the life of the process (safetensors 0.6 to
0.8 with torch 2.13; `safetensors.torch.load` on the file's bytes keeps nothing).
With one adapter per description that is a worker that grows without bound: 7
MiB per 10,000 toy adapters in the soak, about 7 KiB per adapter for a Llama-8B
one on q/v. The plugin gives the loader a `safe_open` that reads the file whole.

`tests/integration/test_vllm_contract.py` fails loudly if vLLM changes the
functions patched or the metric pruned here.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

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


def vllm_is_tested() -> bool:
    """Whether the installed vLLM is the release these patches were written against (warns if not)."""
    import vllm

    if vllm.__version__.startswith(TESTED_VLLM):
        return True
    logger.warning(
        "t2l_vllm's patches are tested on vLLM %s*, found %s: not installed. On CPU, base-model requests batched "
        "beside adapters may be wrong, and vllm:lora_requests_info grows with every description.", TESTED_VLLM, vllm.__version__,
    )
    return False


def install_cpu_lora_fix() -> bool:
    """Patches the CPU LoRA shrink op once per process; returns whether a patch is in place."""
    from vllm.lora.ops.torch_ops import lora_ops
    from vllm.lora.punica_wrapper import punica_cpu

    if getattr(lora_ops.bgmv_shrink, _PATCHED_FLAG, False):
        return True
    if not vllm_is_tested():
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
ADAPTER_LIST_LABELS = ("running_lora_adapters", "waiting_lora_adapters")
_GENERATED_NAME = re.compile(r"^t2l-[0-9a-f]{24}$")
_SUMMARISED_FLAG = "_t2l_summarises_generated_adapters"


def summarise_generated(adapters: str) -> str:
    """`native,t2l-<hex>,t2l-<hex>` -> `native,t2l-generated:2`: a label value drawn from a bounded set."""
    names = [n for n in adapters.split(",") if n]
    kept = [n for n in names if not _GENERATED_NAME.match(n)]
    generated = len(names) - len(kept)
    return ",".join([*kept, f"t2l-generated:{generated}"] if generated else kept)


class _SummarisedLoRAInfo:
    """vLLM's lora_requests_info gauge, with generated adapter names counted rather than listed."""

    def __init__(self, gauge: Any) -> None:
        self._gauge = gauge

    def labels(self, **labels: Any) -> Any:
        for key in ADAPTER_LIST_LABELS:
            if isinstance(labels.get(key), str):
                labels[key] = summarise_generated(labels[key])
        return self._gauge.labels(**labels)


def install_lora_info_summary() -> bool:
    """Makes every Prometheus stat logger vLLM builds from now on summarise generated adapters."""
    from vllm.v1.metrics.loggers import PrometheusStatLogger

    original = PrometheusStatLogger.__init__
    if getattr(original, _SUMMARISED_FLAG, False):
        return True
    if not vllm_is_tested():
        return False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        if getattr(self, "gauge_lora_info", None) is not None:
            self.gauge_lora_info = _SummarisedLoRAInfo(self.gauge_lora_info)

    setattr(__init__, _SUMMARISED_FLAG, True)
    PrometheusStatLogger.__init__ = __init__
    return True


_WHOLE_FILE_FLAG = "_t2l_reads_whole_files"


class WholeFileSafeOpen:
    """`safetensors.safe_open(path, framework="pt")` as vLLM's LoRA loader uses it (a context manager
    with `keys()` and `get_tensor(name)`), reading the file once with `safetensors.torch.load`.

    Adapter files are small (a rank-16 q/v adapter of Llama-3.1-8B holds 6.8 M numbers: 14 MB in
    bfloat16), so reading them whole costs little that mapping them saves; it avoids get_tensor's
    per-tensor leak.
    """

    def __init__(self, filename: str, framework: str = "pt", device: str = "cpu") -> None:
        from safetensors.torch import load

        if framework not in ("pt", "torch"):
            raise ValueError(f"t2l_vllm's safe_open for vLLM's LoRA loader reads PyTorch tensors only, not {framework!r}.")
        with open(filename, "rb") as file:
            self._tensors = {name: tensor.to(device) for name, tensor in load(file.read()).items()}

    def __enter__(self) -> "WholeFileSafeOpen":
        return self

    def __exit__(self, *exc: object) -> None:
        self._tensors = {}

    def keys(self) -> list[str]:
        return sorted(self._tensors)  # as safe_open lists them

    def get_tensor(self, name: str) -> torch.Tensor:
        return self._tensors[name]


class _SafetensorsForLoRALoader:
    """The `safetensors` module as `vllm.lora.lora_model` sees it: `safe_open` replaced, the rest delegated."""

    def __init__(self, module: Any) -> None:
        self._module = module

    safe_open = WholeFileSafeOpen

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)


setattr(_SafetensorsForLoRALoader, _WHOLE_FILE_FLAG, True)


def install_leak_free_lora_loading() -> bool:
    """Makes vLLM's LoRA loader read adapter files whole (see the module docstring); once per process."""
    from vllm.lora import lora_model

    if getattr(lora_model.safetensors, _WHOLE_FILE_FLAG, False):
        return True
    if not vllm_is_tested():
        return False
    lora_model.safetensors = _SafetensorsForLoRALoader(lora_model.safetensors)
    return True
