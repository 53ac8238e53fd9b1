"""Hypernetwork latency per adapter, against a compute floor measured on the same machine.

Times `TextToLoRA.forward` (variants L, M, S) on random task embeddings at the
shapes of three real base models, and compares each time with a floor: the FLOPs
of the output heads (the bulk of the work at these shapes) divided by the rate
this device reaches on a matmul of the largest head's shape. That rate is the
fastest run, measured before and after each model: contention only ever slows a
run, so the best one is closest to what the hardware allows. The ratio (median
time / floor) says how close generation is to that; the targets are batch 32
within 1.3x of the floor and batch 1 within 1.5x. Beside it, a byte floor: the
heads' weights read once at the rate a one-row product streams the largest head
(measured the same way). A batch-1 pass reads every head weight for a few dozen
rows, so `ratio to flop + byte` (time over the two floors added) says how much of
a batch-1 miss is a kernel that streams the weight and then computes, without
overlapping the two. Base shapes are written inline, so nothing is downloaded.

    python benchmarks/hypernet_latency.py [--device cuda] [--quick] [--out results.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from t2l_vllm.generator import GeneratorSettings, keep_freed_memory
from t2l_vllm.hypernet.config import VARIANTS, EncoderSettings, HypernetConfig, LoraSettings
from t2l_vllm.hypernet.model import Workspace, build_hypernet, count_parameters
from t2l_vllm.hypernet.shapes import BaseModelShapes, ModuleShape


@dataclass(frozen=True)
class BaseModel:
    """A base model's `config.json` essentials and the hypernetwork sizes used for it."""

    name: str
    hf_config: dict[str, Any]
    latent_size: int
    head_in_size: int


MODELS: dict[str, BaseModel] = {
    "mistral-7b": BaseModel(
        "mistralai/Mistral-7B-Instruct-v0.2",
        dict(model_type="mistral", num_hidden_layers=32, hidden_size=4096, num_attention_heads=32,
             num_key_value_heads=8, head_dim=128, intermediate_size=14336),
        latent_size=128,
        head_in_size=512,
    ),
    "llama-3.1-8b": BaseModel(
        "meta-llama/Llama-3.1-8B-Instruct",
        dict(model_type="llama", num_hidden_layers=32, hidden_size=4096, num_attention_heads=32,
             num_key_value_heads=8, head_dim=128, intermediate_size=14336),
        latent_size=512,
        head_in_size=2048,
    ),
    "gemma-2-2b": BaseModel(
        "google/gemma-2-2b-it",
        dict(model_type="gemma2", num_hidden_layers=26, hidden_size=2304, num_attention_heads=8,
             num_key_value_heads=4, head_dim=256, intermediate_size=9216),
        latent_size=512,
        head_in_size=2048,
    ),
}
LORA = LoraSettings(rank=8, alpha=16.0, use_rslora=True, target_modules=("q_proj", "v_proj"))
ENCODER = EncoderSettings(model="Alibaba-NLP/gte-large-en-v1.5", dim=1024, pooling="cls", trust_remote_code=True)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TARGET_RATIO = 1.3
TARGET_RATIO_BATCH_1 = 1.5
HEAD_FORMS = ("packed", "dense", "both")
RATE_BATCH = 32  # the matmul rate is measured at the largest head's shape for this many descriptions


def hypernet_config(model: BaseModel, variant: str) -> HypernetConfig:
    base = BaseModelShapes.from_hf_config(model.hf_config, name=model.name)
    return HypernetConfig(
        base=base, variant=variant, latent_size=model.latent_size, head_in_size=model.head_in_size,
        lora=LORA, encoder=ENCODER, head_init="random",  # random heads: no all-zero weights in the matmuls
    )


def head_out_features(variant: str, shape: ModuleShape, rank: int) -> int:
    """Output size of one module's head: L emits A and B whole, M r rows, S one row."""
    width = max(shape.in_features, shape.out_features)
    return {"L": rank * (shape.in_features + shape.out_features), "M": rank * width, "S": width}[variant]


def head_rows(variant: str, batch: int, layers: int, rank: int) -> int:
    """Rows each head processes: one per layer (L), times two passes A/B (M), times r rank rows (S)."""
    return batch * layers * {"L": 1, "M": 2, "S": 2 * rank}[variant]


def head_weights(config: HypernetConfig) -> int:
    """Elements of all output heads' weights: each is read at least once, and multiplied once per row."""
    rank = config.lora.rank
    return sum(config.head_in_size * head_out_features(config.variant, config.base.module_shape(m), rank)
               for m in config.lora.target_modules)


def head_flops(config: HypernetConfig, batch: int) -> int:
    """Multiply-add FLOPs of all output heads for `batch` descriptions."""
    return 2 * head_rows(config.variant, batch, config.base.num_layers, config.lora.rank) * head_weights(config)


def timed_ms(fn: Callable[[], object], warmup: int, repeats: int, sync: Callable[[], None]) -> list[float]:
    """Wall times (ms) of `repeats` calls of `fn` after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def timed_by_form(model: torch.nn.Module, fn: Callable[[], object], args: argparse.Namespace,
                  sync: Callable[[], None]) -> dict[str, list[float]]:
    """{"dense" and/or "packed": wall times (ms)} of `fn`, the hypernetwork's pass, with its heads in that
    form. Both forms are timed round by round, each after its own warm-up, so that a stretch of
    contention on a shared machine falls on both."""
    forms = ("dense", "packed") if args.heads == "both" else (args.heads,)
    times: dict[str, list[float]] = {form: [] for form in forms}
    for round_ in range(args.repeats if len(forms) > 1 else 1):
        for form in forms[round_ % 2:] + forms[:round_ % 2]:
            if form == "packed":
                model.pack_heads()
            else:
                model.unpack_heads()
            times[form] += timed_ms(fn, args.warmup, 1 if len(forms) > 1 else args.repeats, sync)
    model.unpack_heads()
    return times


def device_rates(model: BaseModel, device: torch.device, dtype: torch.dtype, warmup: int, repeats: int,
                 sync: Callable[[], None]) -> tuple[list[int], float, float]:
    """The heads' own kernel (a biased linear) at the largest L head's shape: [M, K, N] of the batch-32
    product, its best FLOP/s, and the best bytes/s at which a one-row product streams the weight."""
    config = hypernet_config(model, "L")
    layers, rank = config.base.num_layers, config.lora.rank
    rows = head_rows("L", RATE_BATCH, layers, rank)
    cols = max(head_out_features("L", config.base.module_shape(m), rank) for m in config.lora.target_modules)
    k = config.head_in_size
    x = torch.randn(rows, k, device=device, dtype=dtype)
    weight = torch.randn(cols, k, device=device, dtype=dtype) * 0.02
    bias = torch.zeros(cols, device=device, dtype=dtype)
    with torch.inference_mode():
        times = timed_ms(partial(F.linear, x, weight, bias), warmup, repeats, sync)
        stream_times = timed_ms(partial(F.linear, x[:1], weight, bias), warmup, repeats, sync)
    weight_bytes = weight.numel() * weight.element_size()
    del x, weight, bias
    return [rows, k, cols], 2 * rows * k * cols / (min(times) / 1e3), weight_bytes / (min(stream_times) / 1e3)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="cpu, cuda or cuda:N (auto: cuda if available)")
    parser.add_argument("--dtype", default="auto", choices=["auto", *DTYPES],
                        help="auto: float32 on CPU, bfloat16 on CUDA")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8, 32])
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own, one per core)")
    parser.add_argument("--heads", choices=HEAD_FORMS, default="packed" if GeneratorSettings.pack_heads else "dense",
                        help="packed: with the packed copies the generator keeps for small passes; dense: without; "
                             "both: each configuration timed both ways, round by round (default: %(default)s)")
    parser.add_argument("--repeats", type=int, help="timed runs per configuration (auto: 3 on CPU, 20 on CUDA)")
    parser.add_argument("--warmup", type=int, help="untimed runs first (auto: 1 on CPU, 5 on CUDA)")
    parser.add_argument("--quick", action="store_true", help="one warm-up and one timed run per configuration")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "hypernet_latency.json")
    args = parser.parse_args(argv)
    args.device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                               else "cpu" if args.device == "auto" else args.device)
    if args.device.type not in ("cpu", "cuda"):
        parser.error(f"--device must be cpu or cuda, got {args.device}")
    on_cuda = args.device.type == "cuda"
    args.dtype = DTYPES[args.dtype] if args.dtype != "auto" else torch.bfloat16 if on_cuda else torch.float32
    args.warmup = 1 if args.quick else args.warmup if args.warmup is not None else 5 if on_cuda else 1
    args.repeats = 1 if args.quick else args.repeats if args.repeats is not None else 20 if on_cuda else 3
    if args.repeats < 1 or args.warmup < 0 or any(b < 1 for b in args.batches):
        parser.error("--repeats and --batches must be positive, --warmup not negative")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    keep_freed_memory()  # as the generator's process runs: a packed pass's outputs are fresh memory
    device, dtype = args.device, args.dtype
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    load_average = os.getloadavg()[0]  # other work on a shared machine skews CPU timings
    dtype_name = str(dtype).removeprefix("torch.")
    print(f"device: {device_name(device)} ({device}, {os.cpu_count()} cores, "
          f"{torch.get_num_threads()} threads, load {load_average:.2f})")
    print(f"dtype: {dtype_name}  torch {torch.__version__}  warm-up {args.warmup}, repeats {args.repeats} (median)")

    rates: dict[str, dict[str, Any]] = {}
    results: list[dict[str, Any]] = []
    header = (f"{'model':<13} {'variant':>7} {'batch':>5} {'heads':>6} {'params (M)':>10} {'ms/adapter':>11} "
              f"{'floor ms/adapter':>16} {'ratio':>6} {'byte floor ms':>13} {'ratio to flop + byte':>20}")
    for key in args.models:
        model_spec = MODELS[key]
        # The rate is measured before and after this model's runs and the floor takes the
        # better one, so a stretch of contention on a shared machine does not lower the floor.
        shape, rate_before, read_before = device_rates(model_spec, device, dtype, args.warmup, args.repeats, sync)
        free_memory(device)
        rows: list[dict[str, Any]] = []
        for variant in args.variants:
            config = hypernet_config(model_spec, variant)
            model = build_hypernet(config).to(device=device, dtype=dtype)
            params = count_parameters(model)
            workspace = Workspace()  # as the generator holds one: outputs reused across passes
            for batch in args.batches:
                task_emb = torch.randn(batch, config.encoder.dim, device=device, dtype=dtype)
                with torch.inference_mode():
                    times = timed_by_form(model, partial(model, task_emb, workspace), args, sync)
                del task_emb
                free_memory(device)
                rows.extend(dict(model=key, base_model=model_spec.name, variant=variant, batch=batch, params=params,
                                 heads=form, head_gflop=head_flops(config, batch) / 1e9,
                                 head_weight_mb=head_weights(config) * dtype.itemsize / 1e6, times_ms=form_times)
                            for form, form_times in times.items())
            del model, workspace
            free_memory(device)
        _, rate_after, read_after = device_rates(model_spec, device, dtype, args.warmup, args.repeats, sync)
        free_memory(device)
        rate, read = max(rate_before, rate_after), max(read_before, read_after)
        rates[key] = {"shape_mkn": shape, "gflops": rate / 1e9,
                      "gflops_before": rate_before / 1e9, "gflops_after": rate_after / 1e9,
                      "weight_read_gbps": read / 1e9, "weight_read_gbps_before": read_before / 1e9,
                      "weight_read_gbps_after": read_after / 1e9}

        print(f"\n{key}: matmul [{shape[0]}x{shape[1]}] @ [{shape[1]}x{shape[2]}] {rate / 1e9:.1f} GFLOP/s "
              f"(best run; {rate_before / 1e9:.1f} before, {rate_after / 1e9:.1f} after); weight read by one row "
              f"{read / 1e9:.1f} GB/s ({read_before / 1e9:.1f} before, {read_after / 1e9:.1f} after)")
        print(header)
        for row in rows:
            ms = statistics.median(row["times_ms"]) / row["batch"]
            floor = row["head_gflop"] * 1e9 / rate * 1e3 / row["batch"]
            byte_floor = row["head_weight_mb"] * 1e6 / read * 1e3 / row["batch"]
            row.update(ms_per_adapter=ms, floor_ms_per_adapter=floor, ratio=ms / floor,
                       byte_floor_ms_per_adapter=byte_floor, ratio_to_flop_plus_byte=ms / (floor + byte_floor))
            print(f"{key:<13} {row['variant']:>7} {row['batch']:>5} {row['heads']:>6} {row['params'] / 1e6:>10.1f} {ms:>11.3f} "
                  f"{floor:>16.3f} {ms / floor:>6.2f} {byte_floor:>13.3f} {ms / (floor + byte_floor):>20.2f}", flush=True)
        results.extend(rows)

    for batch, target in ((1, TARGET_RATIO_BATCH_1), (32, TARGET_RATIO)):
        rows = [r for r in results if r["batch"] == batch]
        if rows:
            print(f"\ntarget: batch {batch} within {target}x of the floor")
        for r in rows:
            verdict = "meets" if r["ratio"] <= target else "misses"
            print(f"{r['model']:<13} {r['variant']} ({r['heads']} heads): {verdict} the target ({r['ratio']:.2f}x floor)")
    if args.heads == "both":
        print("\npacked over dense, median of the per-round ratios (range)")
        for dense, packed in zip(results[::2], results[1::2]):
            ratios = [p / d for p, d in zip(packed["times_ms"], dense["times_ms"])]
            packed["packed_over_dense"] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
            print(f"{packed['model']:<13} {packed['variant']} batch {packed['batch']:>3}: {statistics.median(ratios):.2f} "
                  f"({min(ratios):.2f}-{max(ratios):.2f})")

    peak = {"peak_host_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.type == "cuda":
        peak["peak_cuda_allocated_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    report = dict(
        device=device_name(device), device_type=device.type, cpu_cores=os.cpu_count(),
        torch_threads=torch.get_num_threads(), heads=args.heads, load_average_at_start=load_average, dtype=dtype_name,
        torch_version=torch.__version__, python_version=sys.version.split()[0], warmup=args.warmup, repeats=args.repeats,
        target_ratio=TARGET_RATIO, target_ratio_batch_1=TARGET_RATIO_BATCH_1, lora=dict(rank=LORA.rank, alpha=LORA.alpha, use_rslora=LORA.use_rslora,
                                             target_modules=list(LORA.target_modules)),
        encoder_dim=ENCODER.dim, matmul=rates, results=results, **peak,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
