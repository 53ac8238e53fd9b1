"""Descriptions in, checked LoRA adapters out: the encoder and the hypernetwork, batched.

This is the one place that turns text into adapters; the CLI, the offline engine
and the server's batcher all call `AdapterGenerator.generate_batch`.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from .adapters import DEFAULT_MAX_DELTA_NORM, LoRAAdapter, checked_delta_norms, norm_problem, peft_key
from .descriptions import DEFAULT_MAX_DESCRIPTION_CHARS, DescriptionMix, NormalTask, generated_name, normalize_task
from .encoder import TaskEncoder, load_task_encoder
from .errors import AdapterCheckError, ConfigError, T2LError
from .hypernet.checkpoint import load_checkpoint
from .hypernet.model import TextToLoRA, Workspace, one_thread_below

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# torch threads for generation (`GeneratorSettings.threads`), chosen by the thread-budget measurement
# of docs/benchmarks.md (served throughput and the pass beside a running vLLM engine): all cores.
THREADS_DEFAULT = 0


@dataclass(frozen=True)
class GeneratorSettings:
    """Limits on what the generator accepts and emits."""

    max_description_chars: int = field(default=DEFAULT_MAX_DESCRIPTION_CHARS, metadata={"help": "longest description accepted"})
    max_delta_norm: float = field(default=DEFAULT_MAX_DELTA_NORM, metadata={"help": "refuse adapters whose weight update norm exceeds this"})
    device: str = field(default="auto", metadata={"help": "device for encoder and hypernetwork: auto, cpu, cuda, cuda:1"})
    dtype: str = field(default="auto", metadata={"help": "auto: float32 on CPU, bfloat16 on GPU. bfloat16 on a CPU with AMX: "
                                                                       "7-8B-shape passes 1.5-2.6x faster at batch 1 and 3.7-4.9x at batch 32, "
                                                                       "adapters 0.6-0.9 percent from float32 (docs/benchmarks.md)", "choices": ("auto", *DTYPES)})
    strict: bool = field(default=False, metadata={
        "help": "refuse to start when the probe adapters' strength against the base weights looks like a scaling bug "
                "(default: warn; see `t2l-vllm check`)"})
    encoder_path: str | None = field(default=None, metadata={
        "help": "load the task encoder from this local folder instead of by its name; its weights must hash to the "
                "ones the hypernetwork records (none: by name, from the hub or its cache)"})
    threads: int = field(default=THREADS_DEFAULT, metadata={
        "help": "torch CPU threads of the process that runs the encoder and hypernetwork (the adapter service, or "
                "`generate`); 0: automatic: in the adapter service on a host without a GPU, the cores vLLM's CPU backend "
                "leaves beside its workers (VLLM_CPU_NUM_OF_RESERVED_CPU, else one per worker), where one thread beside "
                "a serving engine on 2 cores gave shorter passes and more tokens/s than two; elsewhere torch's default, "
                "one per core (docs/benchmarks.md, thread budget)"})

    pack_heads: bool = field(default=True, metadata={
        "help": "on a float32 CPU, keep a copy of every head's weight in oneDNN's blocked layout for the passes of "
                "1-3 descriptions: a one-description pass took 0.74-0.84x the time for L and 0.73-0.91x for M at "
                "Mistral-7B and Llama-3.1-8B shapes, for memory the size of the heads (218 MB for L at Mistral-7B, 872 MB at Llama-3.1-8B; "
                "docs/benchmarks.md)"})

    def __post_init__(self) -> None:
        if self.threads < 0:
            raise ConfigError(f"`threads` must be 0 (automatic) or more, got {self.threads}.")
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

    def apply_threads(self) -> None:
        """Sets torch's thread count for this process (`threads`; 0 leaves torch's default: the adapter
        service resolves its 0 first, `service.server.threads_beside_the_engine`)."""
        if self.threads:
            torch.set_num_threads(self.threads)


# glibc gives freed blocks above its mmap threshold back to the kernel (and trims a freed heap top
# above twice that), so each new adapter's matrices (13.6 MB at Mistral-7B shapes) came from fresh
# pages: 3,300 page faults an adapter, 9 ms of a 13 ms copy-out measured here. Keeping up to this much
# freed heap lets the next pass reuse it; it is the most a pass frees at once (32 adapters at 8B shapes).
_KEEP_FREED_BYTES = 512 * 2**20
_MMAP_THRESHOLD_BYTES = 32 * 2**20  # glibc's own ceiling for its adaptive threshold
_malloc_tuned = False


def keep_freed_memory() -> bool:
    """Tunes glibc's malloc in this process so that freed adapter memory is reused, not returned
    and faulted in again; once per process. False where the C library is not glibc."""
    global _malloc_tuned
    if _malloc_tuned:
        return True
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL("libc.so.6")
    m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h
    _malloc_tuned = bool(libc.mallopt(m_trim_threshold, _KEEP_FREED_BYTES) and libc.mallopt(m_mmap_threshold, _MMAP_THRESHOLD_BYTES))
    return _malloc_tuned


def naming_fingerprint(checkpoint_fingerprint: str, dtype: torch.dtype) -> str:
    """The fingerprint that names a generator's adapters: the checkpoint's for float32 passes, and one
    of the checkpoint's and the dtype for any other. A bfloat16 pass computes other weights (0.6-0.9%
    from float32 at 7B shapes), so its adapters must not share names with float32 ones, which a
    deployment's adapter folder or vLLM's registry would then hand out for either."""
    if dtype == torch.float32:
        return checkpoint_fingerprint
    return hashlib.sha256(f"{checkpoint_fingerprint}:{dtype}".encode()).hexdigest()


class AdapterGenerator:
    """Generates named, checked adapters from descriptions in one batched pass.

    `fingerprint` names every adapter it generates: `from_checkpoint` passes the checkpoint's
    through `naming_fingerprint`, so a pass in another dtype names its adapters apart.
    """

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
        # The heads' outputs of one pass, reused by the next (fresh memory costs page faults on
        # every pass); one pass at a time uses it, a concurrent one takes fresh memory.
        self._workspace = Workspace()
        self._workspace_lock = threading.Lock()
        # Small passes use packed copies of the heads (see `TextToLoRA.pack_heads`); a copy that an
        # update of the weights made stale is never used.
        if settings.pack_heads and (packed := hypernet.pack_heads()):
            logger.info("heads packed for passes of 1-3 descriptions: %.0f MB", packed / 2**20)

    @classmethod
    def from_checkpoint(cls, folder: str | Path, settings: GeneratorSettings = GeneratorSettings()) -> "AdapterGenerator":
        """Loads a checkpoint with its encoder, and sets this process's torch threads (`settings.threads`)
        and its malloc to reuse freed adapter memory (`keep_freed_memory`)."""
        settings.apply_threads()
        keep_freed_memory()
        device = settings.resolved_device()
        dtype = settings.resolved_dtype(device)
        hypernet, digest = load_checkpoint(folder, device=device, dtype=dtype)
        encoder = load_task_encoder(folder, hypernet.config, device=device, source=settings.encoder_path)
        return cls(hypernet, encoder, naming_fingerprint(digest, dtype), settings)

    @property
    def base_model(self) -> str:
        return self.config.base.name

    def normalize(self, description: object) -> NormalTask:
        """The normal form of a description or a mix of them; raises `InvalidDescriptionError`."""
        return normalize_task(description, self.settings.max_description_chars)

    def name_of(self, normal: NormalTask) -> str:
        """The adapter's name for a normalised description or mix (`descriptions.generated_name`, which an
        API server also uses to find an adapter vLLM serves while the adapter service is down)."""
        return generated_name(normal, self.fingerprint)

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
        with self._output_memory() as workspace:
            weights = self.hypernet(emb, workspace)  # {module: A (N, L, r, in), B (N, L, out, r)}, in the workspace
            weights = {m: (w.A.float().cpu(), w.B.float().cpu()) for m, w in weights.items()}
            # Each adapter is copied out and checked while its matrices are in cache; these steps
            # move a few MB each and run in one thread (see `one_thread_below`).
            with one_thread_below(sum(A[0].numel() + B[0].numel() for A, B in weights.values())):
                return [self._adapter(text, {m: (A[j], B[j]) for m, (A, B) in weights.items()}) for j, text in enumerate(texts)]

    @contextmanager
    def _output_memory(self) -> Iterator[Workspace | None]:
        if not self._workspace_lock.acquire(blocking=False):
            yield None
            return
        try:
            yield self._workspace
        finally:
            self._workspace_lock.release()

    def _adapter(self, text: NormalTask, weights: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> LoRAAdapter | T2LError:
        """The adapter's own copy of its matrices, checked as `adapters.check_weights` checks them."""
        tensors: dict[str, torch.Tensor] = {}
        bound, scaling = self.settings.max_delta_norm, self.config.lora.scaling
        for module, (A, B) in weights.items():
            # Copied out of the pass's memory into the adapter's own (B transposed into PEFT's
            # [out, r] rows), so vLLM's in-place scaling of B and the cache's lifetime never
            # touch another adapter's tensors, and the next pass can reuse the workspace.
            A, B = torch.empty(A.shape, dtype=A.dtype).copy_(A), torch.empty(B.shape, dtype=B.dtype).copy_(B)
            norms = checked_delta_norms(A, B, scaling, bound)  # (layers,)
            # A NaN or infinity in A or B makes its Gram diagonal, and so the norm, non-finite: the
            # elementwise test runs only then, to tell it apart from an update too large for float64.
            if not bool(torch.isfinite(norms).all()) and not (torch.isfinite(A).all() and torch.isfinite(B).all()):
                return AdapterCheckError(f"adapter for this description refused: {module}: its weights contain NaN or infinity.")
            problem = norm_problem(norms, bound)
            if problem:
                return AdapterCheckError(f"adapter for this description refused: {module}: {problem}.")
            for layer in range(A.shape[0]):
                tensors[peft_key(layer, module, "A")] = A[layer]
                tensors[peft_key(layer, module, "B")] = B[layer]
        return LoRAAdapter(
            name=self.name_of(text),
            lora=self.config.lora,
            tensors=tensors,
            base_model=self.base_model,
            description=text.canonical() if isinstance(text, DescriptionMix) else text,
            metadata={"hypernet": self.fingerprint},
        )
