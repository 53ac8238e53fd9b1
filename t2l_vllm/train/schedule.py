"""The learning-rate schedule of the reference's trainers: linear warm-up, then linear decay to 0."""

from __future__ import annotations


def warmup_linear_decay(step: int, total_steps: int, warmup_frac: float) -> float:
    """The factor on the peak learning rate at `step` (0-based)."""
    warmup = int(warmup_frac * total_steps)
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup))
