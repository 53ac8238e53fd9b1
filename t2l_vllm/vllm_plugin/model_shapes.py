"""The LoRA shapes vLLM's own model definition gives each target module of a base, as JSON.

    python -m t2l_vllm.vllm_plugin.model_shapes OUT.json MODEL_DIR [MODEL_DIR ...]

A model folder needs only its config.json: `internals.lora_shapes` builds the
model on the meta device. OUT.json (vLLM logs to stdout): {model_dir:
{"model.layers.0.self_attn.q_proj": [in_features, out_features], ...}}. It sets up
vLLM's distributed state, so it runs in its own process (`vllm_shapes` starts
it): `t2l-vllm check` and `tests/integration/test_base_shapes_match_vllm.py`
compare against it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from ..paths import set_cpu_engine_defaults, with_cpu_engine_defaults
from .internals import lora_shapes


def vllm_shapes(model_dirs: list[str], timeout_s: float = 900) -> dict[str, dict[str, list[int]]]:
    """{model dir: {"model.layers.{i}.self_attn.q_proj": [in, out], ...}}, from a process of its own."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "shapes.json"
        done = subprocess.run([sys.executable, "-m", __name__, str(out), *model_dirs], env=with_cpu_engine_defaults(),
                              capture_output=True, text=True, timeout=timeout_s)
        if done.returncode != 0:
            raise RuntimeError(f"building the base model with vLLM failed:\n{done.stderr[-3000:]}")
        return json.loads(out.read_text())


def main(out: str, model_dirs: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        shapes = {d: lora_shapes(d, f"{tmp}/init-{i}") for i, d in enumerate(model_dirs)}
    Path(out).write_text(json.dumps(shapes))


if __name__ == "__main__":
    set_cpu_engine_defaults()
    main(sys.argv[1], sys.argv[2:])
