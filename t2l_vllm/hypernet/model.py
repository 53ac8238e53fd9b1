"""The Text-to-LoRA hypernetwork (variants L, M and S), batched over descriptions.

One forward pass maps N task embeddings to the LoRA A and B matrices of every
layer and target module: the trunk runs once over all (description, module,
layer) triples, then each module's head decodes its slice. The layout of the
trunk follows the reference (`hyper_modulator.py`), so that its released
checkpoints import key by key:

    task (N, E) -> Linear + LN -> (N, d/2) ┐
    layer index -> Embedding + LN -> (d/4) ├ concat -> (N, M, L, d)
    module index -> Embedding + LN -> (d/4)┘
    -> mixer (d -> 4d -> d) -> block1 (residual)           : shared by every variant
    -> variant decoder (block2, to_head, head)              : L, M or S

L: one head emits r*(in+out) values, split into A and B.
M: one head per module emits r*max(in,out); a learned A-or-B embedding is added
   before block2 and the head runs twice, truncating to in (A) or out (B).
S: like M, but the head emits one rank row (max(in,out)) at a time; the rank
   position enters through rotary or learned position embeddings.

`residual_blocks` below 2 leaves block2, then block1, out (an identity in their
place): a shallower trunk that fits a small task set less as clusters.

Inference (autograd off) takes four shortcuts that leave every number as the
plain computation gives it, to float32 rounding. The generator packs its
hypernetwork's heads (`pack_heads`): a copy of each weight in oneDNN's blocked layout serves
the passes of a few dozen rows a batch of 1-3 descriptions makes, which MKL
runs at about half its rate (see `packed.py`). The heads write into a
`Workspace` when given one, instead of fresh memory: a batch of 32 at
Mistral-7B shapes returns 0.4-0.7 GB, which fresh memory pays for in page
faults on every pass. M's heads compute only the columns kept: B of v_proj
(out 1024 of width 4096) is a quarter of a head, not a whole one, and where A
and B have the same width both go through one matmul of twice the rows, which
a CPU runs faster than two. And the small matmuls of the trunk run in one
thread (`one_thread_below`): on a shared CPU every OpenMP parallel region
waits for its other threads to be scheduled, which made a 64x128x512 linear
cost 6 ms with 2 threads on a busy 2-core machine, against 0.16 ms with one.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import HypernetConfig
from .packed import PACKED_MAX_ROWS, pack_weight, packed_linear

Tensor = torch.Tensor


@dataclass(frozen=True)
class LoraWeights:
    """Generated A and B of one module for N descriptions and every layer."""

    A: Tensor  # (N, layers, r, in)
    B: Tensor  # (N, layers, out, r)


# Below this many multiply-adds an inference step runs in one thread (about 7 ms of one core here).
SMALL_WORK = 2**29


@contextmanager
def one_thread_below(work: int, limit: int = SMALL_WORK) -> Iterator[None]:
    """Runs the block in one torch thread if autograd is off and `work` (multiply-adds) is below `limit`.

    Small matmuls gain little from a second thread and lose a scheduler time slice at every
    parallel region when another process holds a core; the big head matmuls keep every thread.
    """
    threads = torch.get_num_threads()
    if threads == 1 or work >= limit or torch.is_grad_enabled():
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class Workspace:
    """Output memory that inference passes reuse: one growing buffer per name.

    What a pass returns with a workspace are views into it, valid until the next pass
    that uses the same workspace: copy out what must outlive it. Not for concurrent passes.
    """

    def __init__(self) -> None:
        self._buffers: dict[str, Tensor] = {}

    def take(self, name: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """A tensor of `shape` with `like`'s dtype and device, in the buffer called `name`."""
        numel = math.prod(shape)
        buffer = self._buffers.get(name)
        if buffer is None or buffer.numel() < numel or buffer.dtype != like.dtype or buffer.device != like.device:
            buffer = torch.empty(numel, dtype=like.dtype, device=like.device)
            self._buffers[name] = buffer
        return buffer[:numel].view(shape)

    @property
    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self._buffers.values())


class Head(nn.Linear):
    """An output head: an `nn.Linear` that can also hold a packed copy of its weight (`pack`).

    The copy serves inference passes of at most `PACKED_MAX_ROWS` rows, and only while the
    weight is the one it was made from: an optimizer step, a `load_state_dict` or any other
    in-place change of the weight (its version counter), or a new weight tensor, makes the
    copy stale, and the dense weight serves instead. It is not part of the state dict.
    """

    _packed: tuple[Tensor, int, int] | None = None  # (copy, weight's data_ptr, weight's version)

    def pack(self) -> int:
        """Makes the packed copy; returns its size in bytes (0 where this torch cannot pack)."""
        packed = pack_weight(self.weight, self.bias)
        self._packed = None if packed is None else (packed, self.weight.data_ptr(), self.weight._version)
        return 0 if packed is None else self.weight.numel() * self.weight.element_size()

    def unpack(self) -> None:
        """Drops the packed copy (and its memory)."""
        self._packed = None

    def packed_weight(self, rows: int) -> Tensor | None:
        """The packed copy, if it is fresh and a pass of `rows` rows gains from it."""
        if self._packed is None or rows > PACKED_MAX_ROWS or torch.is_grad_enabled():
            return None
        packed, data_ptr, version = self._packed
        return packed if (self.weight.data_ptr(), self.weight._version) == (data_ptr, version) else None


def linear_into(x: Tensor, linear: nn.Linear, rows: slice | None, workspace: Workspace | None, name: str) -> Tensor:
    """`linear(x)` (x 2-D) restricted to output features `rows` (a contiguous range of the weight's
    rows), written into `workspace[name]` when autograd is off; a whole head's small pass uses its
    packed copy (fresh memory: a few MB, which malloc reuses)."""
    packed = linear.packed_weight(x.shape[0]) if rows is None and isinstance(linear, Head) else None
    if packed is not None:
        return packed_linear(x, packed, linear.bias)
    weight, bias = linear.weight, linear.bias
    if rows is not None:
        weight, bias = weight[rows], None if bias is None else bias[rows]
    if workspace is None or torch.is_grad_enabled():
        return F.linear(x, weight, bias)
    out = workspace.take(name, (x.shape[0], weight.shape[0]), x)
    if bias is None:
        return torch.mm(x, weight.t(), out=out)
    return torch.addmm(bias, x, weight.t(), out=out)


class ResidualBlock(nn.Module):
    """x + MLP(LN(x)), with SiLU after both linears as in the reference."""

    def __init__(self, size: int, dropout: float) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.LayerNorm(size),
            nn.Linear(size, 4 * size),
            nn.SiLU(),
            nn.Dropout(dropout),
            nn.Linear(4 * size, size),
            nn.SiLU(),
            nn.Dropout(dropout),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.mlp(x)


def rotary(x: Tensor, positions: Tensor, base: float = 10000.0) -> Tensor:
    """Llama-style rotary position embedding over the last dimension of x (..., P, D)."""
    dim = x.shape[-1]
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, device=x.device, dtype=torch.float32) / dim))
    freqs = positions.to(torch.float32)[:, None] * inv_freq[None, :]  # (P, D/2)
    angles = torch.cat([freqs, freqs], dim=-1)  # (P, D)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    half = dim // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def peft_default_A(rank: int, in_features: int, cols: int, generator: torch.Generator | None) -> Tensor:
    """PEFT's default lora_A init (kaiming-uniform with a=sqrt(5): U(-1/sqrt(in), 1/sqrt(in)))."""
    bound = 1.0 / math.sqrt(in_features)
    return (torch.rand(rank, cols, generator=generator) * 2 - 1) * bound


class TextToLoRA(nn.Module):
    """Shared parts of every variant; subclasses define the head and `_decode`."""

    variant: str = ""

    def __init__(self, config: HypernetConfig) -> None:
        super().__init__()
        self.config = config
        d, p = config.latent_size, config.dropout
        self.modules_order = list(config.lora.target_modules)
        self.shapes = {m: config.base.module_shape(m) for m in self.modules_order}
        self.rank = config.lora.rank

        self.task_proj = nn.Sequential(nn.Linear(config.encoder.dim, d // 2), nn.LayerNorm(d // 2))
        self.layer_emb = nn.Sequential(nn.Embedding(config.base.num_layers, d // 4), nn.LayerNorm(d // 4))
        self.module_emb = nn.Sequential(nn.Embedding(len(self.modules_order), d // 4), nn.LayerNorm(d // 4))
        self.mixer = nn.Sequential(
            nn.Dropout(p), nn.Linear(d, 4 * d), nn.SiLU(), nn.Dropout(p), nn.Linear(4 * d, d), nn.SiLU(), nn.Dropout(p)
        )
        self.block1 = ResidualBlock(d, p) if config.residual_blocks >= 1 else nn.Identity()
        self.block2 = ResidualBlock(d, p) if config.residual_blocks >= 2 else nn.Identity()
        self.to_head = nn.Sequential(
            nn.LayerNorm(d), nn.Linear(d, 4 * d), nn.SiLU(), nn.Dropout(p), nn.Linear(4 * d, config.head_in_size), nn.SiLU()
        )
        self.heads = nn.ModuleDict(
            {m: Head(config.head_in_size, self.head_out_features(m)) for m in self.modules_order}
        )
        self._register_output_statistics()

    # --- variant interface -------------------------------------------------
    def head_out_features(self, module: str) -> int:
        raise NotImplementedError

    def head_rows_per_description(self, module: str) -> int:
        """Rows one description sends through the whole-head matmul of `module` in one pass."""
        raise NotImplementedError

    def _decode(self, h: Tensor, module: str, workspace: Workspace | None) -> tuple[Tensor, Tensor]:
        """Trunk features (T, d) -> A (T, r, in) and B (T, r, out) for one module (views into
        `workspace` when one is given and autograd is off)."""
        raise NotImplementedError

    def _hyperinit_bias(self, module: str, generator: torch.Generator | None) -> Tensor:
        """Head bias that makes the untrained hypernetwork emit PEFT's initial LoRA."""
        raise NotImplementedError

    # --- shared ------------------------------------------------------------
    def _register_output_statistics(self) -> None:
        """Frozen per-element tensors of reconstruction-trained checkpoints (z-score, offset)."""
        out = self.config.output
        n_layers, r = self.config.base.num_layers, self.rank
        for name, wanted in (("mean", out.zscore), ("std", out.zscore), ("offset", out.offset)):
            if not wanted:
                continue
            for m, shape in self.shapes.items():
                self.register_buffer(f"{name}_A_{m}", torch.zeros(n_layers, r, shape.in_features))
                self.register_buffer(f"{name}_B_{m}", torch.zeros(n_layers, shape.out_features, r))

    @torch.no_grad()
    def reset_heads(self, seed: int = 0) -> None:
        """Initialises the heads as `config.head_init` says.

        "hyperinit" (the reference's SFT init, bias-HyperInit): zero weights, bias set
        so that every description yields PEFT's default LoRA (A random, B zero), so
        training starts from delta-W = 0. "random": small random weights, so that an
        untrained hypernetwork already gives different adapters for different texts.
        """
        generator = torch.Generator().manual_seed(seed)
        for module, head in self.heads.items():
            if self.config.head_init == "hyperinit":
                head.weight.zero_()
                head.bias.copy_(self._hyperinit_bias(module, generator).reshape(-1))
            else:
                head.weight.normal_(0.0, 0.02, generator=generator)
                head.bias.zero_()

    def pack_heads(self) -> int:
        """Gives a packed copy of its weight (see `Head`) to every head that one description's pass
        sends few enough rows through to gain from it; returns the bytes the copies take (0 off a
        float32 CPU, or where this torch cannot pack)."""
        return sum(head.pack() for m, head in self.heads.items() if self.head_rows_per_description(m) <= PACKED_MAX_ROWS)

    def unpack_heads(self) -> None:
        """Drops the heads' packed copies (and their memory): every pass runs on the dense weights."""
        for head in self.heads.values():
            head.unpack()

    def embed_inputs(self, task_emb: Tensor) -> Tensor:
        """(N, E) task embeddings -> (N, modules, layers, d) trunk inputs."""
        n, n_mod, n_lay = task_emb.shape[0], len(self.modules_order), self.config.base.num_layers
        device = task_emb.device
        task = self.task_proj(task_emb)  # (N, d/2)
        layers = self.layer_emb(torch.arange(n_lay, device=device))  # (L, d/4)
        mods = self.module_emb(torch.arange(n_mod, device=device))  # (M, d/4)
        return torch.cat(
            [
                task[:, None, None, :].expand(n, n_mod, n_lay, -1),
                layers[None, None, :, :].expand(n, n_mod, n_lay, -1),
                mods[None, :, None, :].expand(n, n_mod, n_lay, -1),
            ],
            dim=-1,
        )  # (N, M, L, d)

    def forward(self, task_emb: Tensor, workspace: Workspace | None = None) -> dict[str, LoraWeights]:
        """Task embeddings (N, E) -> {module: LoraWeights} for all N descriptions and layers.

        With a `workspace` and autograd off, the matrices are views into its memory, valid
        until its next pass (see `Workspace`); without one, fresh tensors.
        """
        n, n_lay = task_emb.shape[0], self.config.base.num_layers
        d = self.config.latent_size
        rows = n * len(self.modules_order) * n_lay
        with one_thread_below(rows * 16 * d * d):  # mixer and block1: four d x 4d matmuls per row
            h = self.block1(self.mixer(self.embed_inputs(task_emb)))  # (N, M, L, d)
        out: dict[str, LoraWeights] = {}
        for i, module in enumerate(self.modules_order):
            A, B = self._decode(h[:, i].reshape(n * n_lay, -1), module, workspace)  # (N*L, r, in), (N*L, r, out)
            A = A.reshape(n, n_lay, self.rank, -1)
            B = B.reshape(n, n_lay, self.rank, -1).transpose(-1, -2)  # (N, L, out, r)
            out[module] = self._to_raw(module, A, B, in_place=workspace is not None and not torch.is_grad_enabled())
        return out

    def _body_work(self, rows: int) -> int:
        """Multiply-adds of block2 and to_head for `rows` rows: what runs before a head."""
        d, k = self.config.latent_size, self.config.head_in_size
        return rows * (8 * d * d + 4 * d * d + 4 * d * k)

    def _to_raw(self, module: str, A: Tensor, B: Tensor, in_place: bool = False) -> LoraWeights:
        out = self.config.output
        if out.zscore:
            std_a, mean_a = getattr(self, f"std_A_{module}"), getattr(self, f"mean_A_{module}")
            std_b, mean_b = getattr(self, f"std_B_{module}"), getattr(self, f"mean_B_{module}")
            if in_place:
                A, B = A.mul_(std_a + 1e-10).add_(mean_a), B.mul_(std_b + 1e-10).add_(mean_b)
            else:
                A, B = A * (std_a + 1e-10) + mean_a, B * (std_b + 1e-10) + mean_b
        if out.offset:
            offset_a, offset_b = getattr(self, f"offset_A_{module}"), getattr(self, f"offset_B_{module}")
            A, B = (A.add_(offset_a), B.add_(offset_b)) if in_place else (A + offset_a, B + offset_b)
        if out.scale != 1.0:
            A, B = (A.mul_(out.scale), B.mul_(out.scale)) if in_place else (A * out.scale, B * out.scale)
        return LoraWeights(A=A, B=B)


class TextToLoRA_L(TextToLoRA):
    """L: one head per module emits all of A and B at once (largest, most expressive)."""

    variant = "L"

    def head_out_features(self, module: str) -> int:
        s = self.shapes[module]
        return self.rank * (s.in_features + s.out_features)

    def head_rows_per_description(self, module: str) -> int:
        return self.config.base.num_layers

    def _decode(self, h: Tensor, module: str, workspace: Workspace | None) -> tuple[Tensor, Tensor]:
        s = self.shapes[module]
        with one_thread_below(self._body_work(h.shape[0])):
            z = self.to_head(self.block2(h))  # (T, head_in)
        out = linear_into(z, self.heads[module], None, workspace, module)  # (T, r*(in+out))
        A, B = out.split([self.rank * s.in_features, self.rank * s.out_features], dim=-1)
        return A.reshape(-1, self.rank, s.in_features), B.reshape(-1, self.rank, s.out_features)

    def _hyperinit_bias(self, module: str, generator: torch.Generator | None) -> Tensor:
        s = self.shapes[module]
        A = peft_default_A(self.rank, s.in_features, s.in_features, generator)
        return torch.cat([A.reshape(-1), torch.zeros(s.out_features * self.rank)])


class _SharedHead(TextToLoRA):
    """M and S: one head per module, shared by A and B, told apart by a learned embedding."""

    def __init__(self, config: HypernetConfig) -> None:
        super().__init__(config)
        d = config.latent_size
        self.matrix_emb = nn.ParameterDict(
            {m: nn.Parameter(torch.randn(2, d)) for m in self.modules_order}  # row 0: A, row 1: B
        )
        self.matrix_emb_norm = nn.LayerNorm(d)

    def _width(self, module: str) -> int:
        s = self.shapes[module]
        return max(s.in_features, s.out_features)

    def _decode(self, h: Tensor, module: str, workspace: Workspace | None) -> tuple[Tensor, Tensor]:
        s = self.shapes[module]
        emb = self.matrix_emb_norm(self.matrix_emb[module])  # (2, d)
        return self._matrices(h, emb, module, (s.in_features, s.out_features), workspace)

    def _matrices(self, h: Tensor, emb: Tensor, module: str, widths: tuple[int, int],
                  workspace: Workspace | None) -> tuple[Tensor, Tensor]:
        """A (T, r, in) and B (T, r, out): one pass of the shared head per matrix."""
        with one_thread_below(self._body_work(2 * h.shape[0])):
            inputs = [self.block2(h + emb[i]) for i in range(2)]
        rows = [self._rows(x, module, width, workspace, f"{module}.{'AB'[i]}") for i, (x, width) in enumerate(zip(inputs, widths))]
        return rows[0], rows[1]

    def _rows(self, h: Tensor, module: str, width: int, workspace: Workspace | None, name: str) -> Tensor:
        """Head rows for trunk features h (T, d), the first `width` columns of each: (T, r, width)."""
        raise NotImplementedError


class TextToLoRA_M(_SharedHead):
    """M: the shared head emits r rows of max(in, out) values per pass, two passes (A, B)."""

    variant = "M"

    def head_out_features(self, module: str) -> int:
        return self.rank * self._width(module)

    def head_rows_per_description(self, module: str) -> int:
        s, layers = self.shapes[module], self.config.base.num_layers
        return 2 * layers if s.in_features == s.out_features else layers  # A and B stacked, or A alone (B: columns)

    def _matrices(self, h: Tensor, emb: Tensor, module: str, widths: tuple[int, int],
                  workspace: Workspace | None) -> tuple[Tensor, Tensor]:
        if widths[0] != widths[1]:
            return super()._matrices(h, emb, module, widths, workspace)
        # A and B as wide (q_proj): both passes through one matmul of 2T rows.
        t = h.shape[0]
        with one_thread_below(self._body_work(2 * t)):
            inputs = self.block2(torch.cat([h + emb[0], h + emb[1]]))  # (2T, d)
        both = self._rows(inputs, module, widths[0], workspace, f"{module}.AB")  # (2T, r, width)
        return both[:t], both[t:]

    def _rows(self, h: Tensor, module: str, width: int, workspace: Workspace | None, name: str) -> Tensor:
        full = self._width(module)
        with one_thread_below(self._body_work(h.shape[0])):
            z = self.to_head(h)  # (T, head_in)
        head = self.heads[module]
        if width == full:
            return linear_into(z, head, None, workspace, name).reshape(-1, self.rank, full)
        # Only the first `width` of each rank's `full` outputs are kept, and no work is done on the
        # rest: one matmul per rank row, on that row's first `width` rows of the weight, a contiguous
        # block. (A batched matmul over the strided (r, width, head_in) view copies the whole view
        # first in bfloat16: 200 ms of a 5 ms product at Llama-3.1-8B shapes.)
        weight = head.weight.view(self.rank, full, -1)[:, :width]
        bias = head.bias.view(self.rank, full)[:, :width]
        if workspace is None or torch.is_grad_enabled():
            out = torch.stack([F.linear(z, weight[i], bias[i]) for i in range(self.rank)])
        else:
            out = workspace.take(name, (self.rank, z.shape[0], width), z)
            for i in range(self.rank):
                torch.addmm(bias[i], z, weight[i].t(), out=out[i])
        return out.transpose(0, 1)  # (T, r, width)

    def _hyperinit_bias(self, module: str, generator: torch.Generator | None) -> Tensor:
        s = self.shapes[module]
        return peft_default_A(self.rank, s.in_features, self._width(module), generator) / math.sqrt(2)


class TextToLoRA_S(_SharedHead):
    """S: the shared head emits one rank row per pass; r positions, two matrices."""

    variant = "S"

    def __init__(self, config: HypernetConfig) -> None:
        super().__init__(config)
        if config.position_encoding == "learned":
            d = config.latent_size
            self.rank_emb = nn.Sequential(nn.Embedding(self.rank, d), nn.LayerNorm(d))

    def head_out_features(self, module: str) -> int:
        return self._width(module)

    def head_rows_per_description(self, module: str) -> int:
        return self.config.base.num_layers * self.rank

    def _rows(self, h: Tensor, module: str, width: int, workspace: Workspace | None, name: str) -> Tensor:
        positions = torch.arange(self.rank, device=h.device)
        t = h.shape[0]
        with one_thread_below(self._body_work(t * self.rank)):
            h = h[:, None, :].expand(-1, self.rank, -1)  # (T, r, d)
            if self.config.position_encoding == "learned":
                h = h + self.block2(self.rank_emb(positions))[None]
            else:
                h = self.block2(rotary(h, positions))
            z = self.to_head(h).reshape(t * self.rank, -1)  # (T*r, head_in)
        # the first `width` outputs are the first rows of the head's weight: no work on the rest
        rows = None if width == self._width(module) else slice(0, width)
        return linear_into(z, self.heads[module], rows, workspace, name).reshape(t, self.rank, width)

    def _hyperinit_bias(self, module: str, generator: torch.Generator | None) -> Tensor:
        s = self.shapes[module]
        A = peft_default_A(1, s.in_features, self._width(module), generator)
        return A.reshape(-1) / math.sqrt(2) / math.sqrt(self.rank)


VARIANT_CLASSES: dict[str, type[TextToLoRA]] = {cls.variant: cls for cls in (TextToLoRA_L, TextToLoRA_M, TextToLoRA_S)}


def build_hypernet(config: HypernetConfig, seed: int = 0) -> TextToLoRA:
    """A freshly initialised hypernetwork for `config` (deterministic for a given seed)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = VARIANT_CLASSES[config.variant](config)
        model.reset_heads(seed)
    return model.eval()


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (frozen statistics buffers are not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
