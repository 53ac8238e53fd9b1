"""Head weights in oneDNN's blocked layout, for the small inference passes of a CPU.

A head matmul at batch 1 has a few dozen rows (one per base layer: 32 for L) against a
weight of 20-130 M values. MKL's sgemm, which `torch.addmm` calls for float32 on CPU,
repacks the whole weight into its blocked layout on every call, and at 32 rows that
packing traffic bounds the pass: 53-59 GFLOP/s against 95-113 at 1,024 rows (one
thread, this project's 2-core Xeon). A weight reordered once into oneDNN's layout
skips it: 0.70-0.84x the time at 32-64 rows, even at 128-256 and slower beyond
(measured at K=512, N=65,536 and K=2,048, N=40,960 with 1 and 2 threads; docs/benchmarks.md).
So a packed copy serves passes of at most `PACKED_MAX_ROWS` rows, the dense weight the rest.

The two ops are torch's own (the ones its inductor compiler uses for float32 CPU linears);
they are private, so `pack_weight` checks them against `F.linear` before a copy is used,
and a torch without them simply keeps the dense path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

# Passes of at most this many rows use a packed copy (batch 1-3 for L, 1 for M's stacked q_proj):
# at 96 rows the packed copy took 0.79-0.88x the time, at 128-256 0.84-1.10x.
PACKED_MAX_ROWS = 96


def packable(weight: Tensor) -> bool:
    """Whether a packed copy of `weight` can exist: float32 on CPU, oneDNN in this torch."""
    return (weight.device.type == "cpu" and weight.dtype == torch.float32 and not weight.is_inference()
            and torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


def packed_linear(x: Tensor, packed: Tensor, bias: Tensor | None) -> Tensor:
    """`F.linear(x, weight, bias)` with the weight's packed copy (x 2-D, float32, contiguous)."""
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), packed, bias, "none", [], "")


def pack_weight(weight: Tensor, bias: Tensor | None) -> Tensor | None:
    """A packed copy of a linear's weight (out, in), or None where this torch cannot make one
    that agrees with `F.linear` on a probe input (to float32 rounding)."""
    if not packable(weight):
        return None
    with torch.no_grad():
        try:
            packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), PACKED_MAX_ROWS)
            probe = torch.randn(8, weight.shape[1], generator=torch.Generator().manual_seed(0))
            got, want = packed_linear(probe, packed, bias), F.linear(probe, weight, bias)
        except (RuntimeError, AttributeError):
            return None
    scale = want.abs().max().item() + 1e-30
    return packed if (got - want).abs().max().item() <= 1e-4 * scale else None
