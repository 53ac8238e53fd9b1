"""The check every task encoder passes before anything is served with it.

A broken encoder fails silently: a text encoder whose position tables were
never initialised can still return vectors, only all nearly the same one (the
reference's gte-large under transformers 5 embeds unrelated sentences at cosine
1.000), and every description then gets the same unspecialised adapter. So at
load time the encoder's buffers must hold sane numbers, and a few probe texts
must embed the way any working text encoder embeds them, trained or random:
unrelated texts apart, near-identical wordings closer to each other than
unrelated texts are.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError

# Pairs of wordings one word apart: any encoder that reads its input puts them closer
# than texts about different things. The first texts of the pairs are mutually unrelated.
PARAPHRASES = (
    ("Translate the sentence into French.", "Translate this sentence into French."),
    ("Answer multiple-choice science questions.", "Answer multiple choice science questions."),
    ("Solve the math word problem step by step.", "Solve this math word problem step by step."),
    ("Write a short poem about the sea.", "Write a little poem about the sea."),
)
# Unrelated texts closer than this are one vector: the collapse the reference's encoder shows.
COLLAPSED_COSINE = 0.999
# Magnitudes no encoder buffer (position ids, rotary tables, token types) reaches; uninitialised memory does.
ABSURD_MAGNITUDE = 1e7


@dataclass(frozen=True)
class ProbeResult:
    """Cosines over the probe texts: how far apart the encoder puts texts."""

    unrelated_max: float  # the closest two unrelated texts
    unrelated_mean: float
    paraphrase_mean: float

    @property
    def collapsed(self) -> bool:
        return self.unrelated_max >= COLLAPSED_COSINE

    @property
    def reads_text(self) -> bool:
        return self.paraphrase_mean > self.unrelated_mean


def bad_buffers(model: nn.Module) -> list[str]:
    """Buffers holding NaN, infinity or magnitudes no real buffer has (a few, each with why)."""
    problems = []
    for name, buffer in model.named_buffers():
        if buffer.numel() == 0 or buffer.dtype == torch.bool or buffer.device.type == "meta":
            continue
        values = buffer.detach()
        if values.is_floating_point() and not bool(torch.isfinite(values).all()):
            problems.append(f"`{name}` holds NaN or infinity")
        elif float(values.abs().max()) > ABSURD_MAGNITUDE:
            problems.append(f"`{name}` holds {float(values.abs().max()):.4g}")
    return problems


def probe(encode: Callable[[list[str]], torch.Tensor]) -> ProbeResult:
    """Embeds the probe texts with `encode` and measures their cosines."""
    first = [a for a, _ in PARAPHRASES]
    second = [b for _, b in PARAPHRASES]
    vectors = torch.nn.functional.normalize(encode(first + second).float(), dim=-1)
    a, b = vectors[: len(first)], vectors[len(first):]
    unrelated = a @ a.T  # (P, P): off-diagonal entries are unrelated pairs
    off_diagonal = unrelated[~torch.eye(len(first), dtype=torch.bool)]
    return ProbeResult(float(off_diagonal.max()), float(off_diagonal.mean()), float((a * b).sum(-1).mean()))


def check_encoder(name: str, model: nn.Module, encode: Callable[[list[str]], torch.Tensor]) -> ProbeResult:
    """Raises `ConfigError` saying what is wrong with encoder `name` and what to do; else the probe's figures."""
    remedy = (
        "Served, it would give the hypernetwork inputs it never trained on (at worst, one adapter for every description). "
        "If it runs remote code written for transformers 4, install the transformers release that code was written for."
    )
    problems = bad_buffers(model)
    if problems:
        raise ConfigError(f"task encoder `{name}` failed its self-check: {'; '.join(problems[:3])}. {remedy}")
    try:
        result = probe(encode)
    except (IndexError, RuntimeError, ValueError) as err:
        raise ConfigError(f"task encoder `{name}` failed its self-check: embedding probe texts raised {type(err).__name__}: {err}. {remedy}") from err
    if result.collapsed:
        raise ConfigError(
            f"task encoder `{name}` failed its self-check: unrelated texts embed at cosine {result.unrelated_max:.4f} "
            f"(at least {COLLAPSED_COSINE} is one vector for every text). {remedy}"
        )
    if not result.reads_text:
        raise ConfigError(
            f"task encoder `{name}` failed its self-check: near-identical wordings embed no closer than unrelated texts "
            f"(mean cosine {result.paraphrase_mean:.3f} against {result.unrelated_mean:.3f}). {remedy}"
        )
    return result
