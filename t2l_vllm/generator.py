"""Descriptions in, checked LoRA adapters out: the encoder and the hypernetwork, batched.

This is the one place that turns text into adapters; the CLI, the offline engine
and the server's batcher all call `AdapterGenerator.generate_batch`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from .adapters import DEFAULT_MAX_DELTA_NORM, LoRAAdapter, check_weights, peft_key
from .descriptions import DEFAULT_MAX_DESCRIPTION_CHARS, DescriptionMix, NormalTask, adapter_key, adapter_name, normalize_task
from .encoder import TaskEncoder, load_task_encoder
from .errors import AdapterCheckError, ConfigError, T2LError
from .hypernet.checkpoint import load_checkpoint
from .hypernet.model import TextToLoRA

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class GeneratorSettings:
    """Limits on what the generator accepts and emits."""

    max_description_chars: int = field(default=DEFAULT_MAX_DESCRIPTION_CHARS, metadata={"help": "longest description accepted"})
    max_delta_norm: float = field(default=DEFAULT_MAX_DELTA_NORM, metadata={"help": "refuse adapters whose weight update norm exceeds this"})
    device: str = field(default="auto", metadata={"help": "device for encoder and hypernetwork: auto, cpu, cuda, cuda:1"})
    dtype: str = field(default="auto", metadata={"help": "auto: float32 on CPU, bfloat16 on GPU", "choices": ("auto", *DTYPES)})
    strict: bool = field(default=False, metadata={
        "help": "refuse to start when the probe adapters' strength against the base weights looks like a scaling bug "
                "(default: warn; see `t2l-vllm check`)"})
    encoder_path: str | None = field(default=None, metadata={
        "help": "load the task encoder from this local folder instead of by its name; its weights must hash to the "
                "ones the hypernetwork records (none: by name, from the hub or its cache)"})

    def __post_init__(self) -> None:
        if self.max_description_chars <= 0:
            raise ConfigError(f"`max_description_chars` must be positive, got {self.max_description_chars}.")
        if self.max_delta_norm <= 0:
            raise ConfigError(f"`max_delta_norm` must be positive, got {self.max_delta_norm}.")
        if self.dtype not in ("auto", *DTYPES):
            raise ConfigError(f"`dtype` must be auto or one of {sorted(DTYPES)}, got {self.dtype!r}.")

    def resolved_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def resolved_dtype(self, device: torch.device) -> torch.dtype:
        """float32 on CPU (bf16 matmuls are several times slower there), bf16 on GPU."""
        if self.dtype == "auto":
            return torch.bfloat16 if device.type == "cuda" else torch.float32
        return DTYPES[self.dtype]


class AdapterGenerator:
    """Generates named, checked adapters from descriptions in one batched pass."""

    def __init__(
        self,
        hypernet: TextToLoRA,
        encoder: TaskEncoder,
        fingerprint: str,
        settings: GeneratorSettings = GeneratorSettings(),
    ) -> None:
        self.hypernet = hypernet.eval()
        self.encoder = encoder
        self.fingerprint = fingerprint
        self.settings = settings
        self.config = hypernet.config
        first = next(hypernet.parameters())
        self.device, self.dtype = first.device, first.dtype

    @classmethod
    def from_checkpoint(cls, folder: str | Path, settings: GeneratorSettings = GeneratorSettings()) -> "AdapterGenerator":
        device = settings.resolved_device()
        hypernet, digest = load_checkpoint(folder, device=device, dtype=settings.resolved_dtype(device))
        encoder = load_task_encoder(folder, hypernet.config, device=device, source=settings.encoder_path)
        return cls(hypernet, encoder, digest, settings)

    @property
    def base_model(self) -> str:
        return self.config.base.name

    def normalize(self, description: object) -> NormalTask:
        """The normal form of a description or a mix of them; raises `InvalidDescriptionError`."""
        return normalize_task(description, self.settings.max_description_chars)

    def name_of(self, normal: NormalTask) -> str:
        """The adapter's name for a normalised description or mix: the one place a name is made."""
        return adapter_name(adapter_key(normal, self.fingerprint))

    def embed(self, normals: Sequence[NormalTask]) -> torch.Tensor:
        """Task embeddings: one encoder call for every description involved.

        A mix is the weighted sum of its parts' embeddings, rescaled to their
        weighted norm, so it stays on the sphere the encoder's outputs (and the
        hypernetwork's training inputs) lie on.
        """
        texts = list(dict.fromkeys(t for n in normals for t in ((p for p, _ in n.parts) if isinstance(n, DescriptionMix) else (n,))))
        rows = dict(zip(texts, self.encoder.encode(texts))) if texts else {}
        out = []
        for normal in normals:
            if isinstance(normal, str):
                out.append(rows[normal])
                continue
            parts = torch.stack([rows[text] for text, _ in normal.parts])  # (P, dim)
            weights = torch.tensor([w for _, w in normal.parts], dtype=parts.dtype, device=parts.device)[:, None]
            mixed = (weights * parts).sum(0)
            out.append(torch.nn.functional.normalize(mixed, dim=-1) * (weights[:, 0] * parts.norm(dim=-1)).sum())
        return torch.stack(out) if out else torch.empty(0)

    def name_for(self, description: object) -> str:
        """The adapter name a description will get, without generating it."""
        return self.name_of(self.normalize(description))

    def generate(self, descriptions: Sequence[object]) -> list[LoRAAdapter]:
        """Adapters for all descriptions in one pass; raises the first `T2LError` met."""
        results = self.generate_batch(descriptions)
        for result in results:
            if isinstance(result, T2LError):
                raise result
        return results  # type: ignore[return-value]

    @torch.no_grad()
    def generate_batch(self, descriptions: Sequence[object]) -> list[LoRAAdapter | T2LError]:
        """One result per description: its adapter, or the error that refused it.

        Descriptions with the same normal form share one adapter and one row of the
        pass. A bad description or a refused adapter does not fail the others.
        """
        results: list[LoRAAdapter | T2LError | None] = [None] * len(descriptions)
        positions: dict[NormalTask, list[int]] = {}  # normal form -> where it was asked for
        for i, text in enumerate(descriptions):
            try:
                positions.setdefault(self.normalize(text), []).append(i)
            except T2LError as err:
                results[i] = err
        if positions:
            texts = list(positions)
            for text, result in zip(texts, self.generate_from_embeddings(texts, self.embed(texts))):
                for i in positions[text]:
                    results[i] = result
        return results  # type: ignore[return-value]

    @torch.no_grad()
    def generate_from_embeddings(self, texts: Sequence[NormalTask], embeddings: torch.Tensor) -> list[LoRAAdapter | T2LError]:
        """The hypernetwork pass for normalised descriptions (or mixes) whose task embeddings are known."""
        if not texts:
            return []
        emb = embeddings.to(self.device, self.dtype)
        weights = self.hypernet(emb)  # {module: A (N, L, r, in), B (N, L, out, r)}
        weights = {m: (w.A.float().cpu(), w.B.float().cpu()) for m, w in weights.items()}
        return [self._adapter(text, {m: (A[j], B[j]) for m, (A, B) in weights.items()}) for j, text in enumerate(texts)]

    def _adapter(self, text: NormalTask, weights: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> LoRAAdapter | T2LError:
        name = self.name_of(text)
        lora = self.config.lora
        tensors: dict[str, torch.Tensor] = {}
        for module, (A, B) in weights.items():
            problem = check_weights(A, B, lora.scaling, self.settings.max_delta_norm)
            if problem:
                return AdapterCheckError(f"adapter for this description refused: {module}: {problem}.")
            for layer in range(A.shape[0]):
                # clone: every adapter owns its memory, so vLLM's in-place scaling of B
                # and the cache's lifetime never touch another adapter's tensors.
                tensors[peft_key(layer, module, "A")] = A[layer].clone()
                tensors[peft_key(layer, module, "B")] = B[layer].clone()
        return LoRAAdapter(
            name=name,
            lora=lora,
            tensors=tensors,
            base_model=self.base_model,
            description=text.canonical() if isinstance(text, DescriptionMix) else text,
            metadata={"hypernet": self.fingerprint},
        )
