"""The LoRA shapes vLLM's own model definition gives each target module of a base, as JSON.

    python -m t2l_vllm.vllm_plugin.model_shapes OUT.json MODEL_DIR [MODEL_DIR ...]

A model folder needs only its config.json: the model is built on the meta device,
so no weights are read or allocated, even for 7B-parameter shapes. For every
linear layer of every decoder layer, the packed module vLLM builds (`qkv_proj`,
`gate_up_proj`) is split back into the names an adapter uses through the class's
`packed_modules_mapping`, exactly as vLLM's LoRA manager slices a packed layer:
sub-module i gets `output_sizes[i]`; a module packed from one name (Phi-3's
`qkv_proj`) gets them all. OUT.json (vLLM logs to stdout): {model_dir:
{"model.layers.0.self_attn.q_proj": [in_features, out_features], ...}}.

It uses vLLM internals (engine config, distributed init, model construction), so
it runs in its own process (`vllm_shapes` starts it): `t2l-vllm check` and
`tests/integration/test_base_shapes_match_vllm.py` compare against it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch


def lora_shapes(model_dir: str, init_file: str) -> dict[str, list[int]]:
    """[in, out] of every LoRA target of every decoder layer, by the name an adapter gives it."""
    from vllm.config import set_current_vllm_config
    from vllm.distributed.parallel_state import (
        destroy_distributed_environment,
        destroy_model_parallel,
        ensure_model_parallel_initialized,
        init_distributed_environment,
    )
    from vllm.engine.arg_utils import EngineArgs
    from vllm.model_executor.layers.linear import LinearBase
    from vllm.model_executor.model_loader.utils import initialize_model

    config = EngineArgs(
        model=model_dir, dtype="float32", skip_tokenizer_init=True, enable_lora=True, max_model_len=128
    ).create_engine_config()
    with set_current_vllm_config(config):
        init_distributed_environment(
            world_size=1, rank=0, local_rank=0, distributed_init_method=f"file://{init_file}", backend="gloo"
        )
        ensure_model_parallel_initialized(1, 1)  # groups depend on the model (an MoE has an expert group)
        try:
            with torch.device("meta"):
                model = initialize_model(config)
        finally:
            destroy_model_parallel()
            destroy_distributed_environment()
    packed = getattr(model, "packed_modules_mapping", {})
    shapes: dict[str, list[int]] = {}
    for name, module in model.named_modules():
        if ".layers." not in name or not isinstance(module, LinearBase):
            continue
        prefix, _, last = name.rpartition(".")
        parts = packed.get(last, [last])
        sizes = list(getattr(module, "output_sizes", None) or [module.output_size])
        if len(parts) == 1:
            sizes = [sum(sizes)]
        if len(parts) != len(sizes):
            raise SystemExit(f"{name}: packed from {parts} but has output sizes {sizes}")
        for part, size in zip(parts, sizes):
            shapes[f"{prefix}.{part}"] = [int(module.input_size), int(size)]
    return shapes


def vllm_shapes(model_dirs: list[str], timeout_s: float = 900) -> dict[str, dict[str, list[int]]]:
    """{model dir: {"model.layers.{i}.self_attn.q_proj": [in, out], ...}}, from a process of its own."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "shapes.json"
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
        done = subprocess.run([sys.executable, "-m", __name__, str(out), *model_dirs], env=env, capture_output=True, text=True, timeout=timeout_s)
        if done.returncode != 0:
            raise RuntimeError(f"building the base model with vLLM failed:\n{done.stderr[-3000:]}")
        return json.loads(out.read_text())


def main(out: str, model_dirs: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        shapes = {d: lora_shapes(d, f"{tmp}/init-{i}") for i, d in enumerate(model_dirs)}
    Path(out).write_text(json.dumps(shapes))


if __name__ == "__main__":
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    main(sys.argv[1], sys.argv[2:])
