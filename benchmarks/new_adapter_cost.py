"""What a new adapter costs after its hypernetwork pass, step by step, at real base-model shapes.

At Llama-3.1-8B q_proj/v_proj rank-8 shapes (32 layers; an adapter is 3.4 M float32
numbers, 13.6 MB) this times, for one description:

    pass          the hypernetwork pass at batch 1 (L and M, d=512, head_in 2048), the reference
    check         the generator's copy-out and weight checks (`AdapterGenerator._adapter`)
    write         the PEFT folder into a store on /dev/shm (`AdapterStore.put`: safetensors + JSON, rename)
    read+parse    vLLM's worker loading it: `PEFTHelper.from_local_dir`, `validate_legal`,
                  `LoRAModel.from_local_checkpoint` (with t2l_vllm's fixes installed, as in a served
                  worker: the loader reads the file whole), packing q/k/v and folding the scaling into
                  B (`PackedLoRALayerWeights.pack`, what `_create_merged_loras_inplace` does)
    copy to slot  `MergedQKVParallelLinearWithLoRA.set_lora` for every layer, on a real vLLM LoRA layer
                  built at these shapes (its stacked slot buffers for --max-loras 4)

A whole vLLM LoRA manager cannot run at these shapes here: it needs the 8B model (16-32 GB)
on a 2-core machine with 23 GB shared by other jobs; the functions above are the ones its
`_load_adapter` and `activate_adapter` call. The question the table answers: is write +
load (read+parse, copy to slot) larger than the pass, so that handing adapters over in
memory would pay? Each step's time is the median of `--repeats`, interleaved; the JSON has
every sample. One process, `--threads` torch threads (default 1: the adapter service's).

    python benchmarks/new_adapter_cost.py [--repeats 7 --threads 1 --out results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from hypernet_latency import MODELS, device_name, hypernet_config

from t2l_vllm.adapter_store import AdapterStore
from t2l_vllm.generator import AdapterGenerator, keep_freed_memory
from t2l_vllm.hypernet.model import build_hypernet

MODEL = "llama-3.1-8b"
MAX_LORAS = 4
SCHEMA = "t2l_vllm.new_adapter_cost/1"


def vllm_lora_layer(hf_config: dict[str, Any], init_file: str) -> tuple[Any, Any]:
    """A vLLM `MergedQKVParallelLinearWithLoRA` over a `QKVParallelLinear` of one decoder layer at
    these shapes (its base weight on the CPU), with slot buffers for MAX_LORAS adapters; and the LoRAConfig."""
    from vllm.config import LoRAConfig, VllmConfig, set_current_vllm_config
    from vllm.distributed.parallel_state import (
        ensure_model_parallel_initialized,
        init_distributed_environment,
    )
    from vllm.lora.layers.column_parallel_linear import MergedQKVParallelLinearWithLoRA
    from vllm.model_executor.layers.linear import QKVParallelLinear

    lora_config = LoRAConfig(max_lora_rank=8, max_loras=MAX_LORAS, lora_dtype=torch.float32)
    with set_current_vllm_config(VllmConfig()):
        init_distributed_environment(world_size=1, rank=0, local_rank=0, distributed_init_method=f"file://{init_file}",
                                     backend="gloo")
        ensure_model_parallel_initialized(1, 1)
        hidden, heads, kv_heads = hf_config["hidden_size"], hf_config["num_attention_heads"], hf_config["num_key_value_heads"]
        base = QKVParallelLinear(hidden, hf_config["head_dim"], heads, kv_heads, bias=False, params_dtype=torch.float32)
        layer = MergedQKVParallelLinearWithLoRA(base)
        layer.create_lora_weights(MAX_LORAS, lora_config)
    return layer, lora_config


def vllm_read_and_parse(folder: Path, lora_config: Any, layers: int) -> list[Any]:
    """What vLLM's worker does with a PEFT folder before the slot copy: per layer the packed q/k/v weights."""
    from vllm.lora.lora_model import LoRAModel
    from vllm.lora.lora_weights import PackedLoRALayerWeights
    from vllm.lora.peft_helper import PEFTHelper

    helper = PEFTHelper.from_local_dir(str(folder), 8192)
    helper.validate_legal(lora_config)
    model = LoRAModel.from_local_checkpoint(str(folder), {"q_proj", "k_proj", "v_proj"}, peft_helper=helper,
                                            lora_model_id=1, device="cpu", dtype=lora_config.lora_dtype)
    packed = []
    for i in range(layers):
        prefix = f"model.layers.{i}.self_attn."
        packed.append(PackedLoRALayerWeights.pack([model.get_lora(prefix + m) for m in ("q_proj", "k_proj", "v_proj")]))
    return packed


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    parser.add_argument("--adapter-dir", default="/dev/shm", help="where the store writes (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "new_adapter_cost.json")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as the generator's process runs
    from t2l_vllm.vllm_plugin.internals import install_fixes

    fixes = install_fixes()  # the loader's whole-file read, as in a served worker
    spec = MODELS[MODEL]
    layers = spec.hf_config["num_hidden_layers"]
    generators = {v: AdapterGenerator(build_hypernet(hypernet_config(spec, v)), None, f"bench-{v}") for v in ("L", "M")}  # type: ignore[arg-type]
    emb = torch.randn(1, 1024)
    work = Path(tempfile.mkdtemp(prefix="t2l-new-adapter-"))
    try:
        layer, lora_config = vllm_lora_layer(spec.hf_config, str(work / "dist-init"))
        store = AdapterStore(args.adapter_dir)
        counter = iter(range(10**9))
        state: dict[str, Any] = {}

        def pass_only(v: str) -> Callable[[], object]:
            generator = generators[v]
            return lambda: generator.hypernet(emb, generator._workspace)

        def check() -> None:
            generator = generators["L"]
            weights = {m: (w.A, w.B) for m, w in generator.hypernet(emb, generator._workspace).items()}
            state["weights"] = weights  # the check itself is what is timed below

        def check_only() -> None:
            state["adapter"] = generators["L"]._adapter(f"description {next(counter)}",
                                                         {m: (A[0], B[0]) for m, (A, B) in state["weights"].items()})

        def write() -> None:
            adapter = state["adapter"]
            state["stored"] = store.put(adapter)

        def read_and_parse() -> None:
            state["packed"] = vllm_read_and_parse(state["stored"].path, lora_config, layers)

        def copy_to_slot() -> None:
            for packed in state["packed"]:
                layer.set_lora(1, packed.lora_a, packed.lora_b)
            store.remove(state["stored"].name)

        check()
        steps = {"pass_L": pass_only("L"), "pass_M": pass_only("M"), "check": check_only, "write": write,
                 "read_parse": read_and_parse, "copy_to_slot": copy_to_slot}
        with torch.no_grad():
            for fn in steps.values():  # warm-up
                fn()
            samples: dict[str, list[float]] = {k: [] for k in steps}
            for _ in range(args.repeats):
                for name, fn in steps.items():  # in the order a new adapter meets them
                    samples[name].append(timed(fn))
        store.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ms = {k: 1e3 * statistics.median(v) for k, v in samples.items()}
    delivery = ms["write"] + ms["read_parse"] + ms["copy_to_slot"]
    adapter_mb = sum(t.numel() * t.element_size() for t in state["adapter"].tensors.values()) / 1e6
    print(f"{MODEL} q/v rank 8: one adapter {adapter_mb:.1f} MB; {device_name(torch.device('cpu'))}, {args.threads} torch "
          f"threads, load {os.getloadavg()[0]:.2f}; median of {args.repeats}")
    for name, value in ms.items():
        print(f"  {name:<14} {value:8.1f} ms")
    print(f"  write + load   {delivery:8.1f} ms = {delivery / ms['pass_L']:.2f} x the L pass, {delivery / ms['pass_M']:.2f} x the M pass")
    report = {"schema": SCHEMA, "model": MODEL, "device": device_name(torch.device("cpu")), "cpu_cores": os.cpu_count(),
              "torch_threads": args.threads, "load_average_at_end": os.getloadavg()[0], "adapter_mb": adapter_mb,
              "fixes": fixes, "ms": ms, "samples_ms": {k: [1e3 * x for x in v] for k, v in samples.items()},
              "write_plus_load_ms": delivery, "write_plus_load_over_pass": {v: delivery / ms[f"pass_{v}"] for v in ("L", "M")}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
