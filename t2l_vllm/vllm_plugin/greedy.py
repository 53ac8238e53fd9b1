"""Greedy token ids from vLLM for several base models in one process, one engine at a time.

    python -m t2l_vllm.vllm_plugin.greedy PLAN.json RESULTS.json

Starting a vLLM engine costs two process spawns on CPU (engine core and worker),
each importing vLLM again: about 35 s a model on two cores. Here the engine runs
in this process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`, the `uni` executor), so vLLM
is imported once and each further model starts in seconds. That is why a test
of many architectures runs this script once instead of starting an engine per
model in its own process.

PLAN.json is a list of runs: `{"model": folder, "prompt": text, "max_tokens": n,
"max_lora_rank": r, "adapters": {name: PEFT folder}}`. RESULTS.json holds, per run
in the same order, `{"base": ids, "adapters": {name: ids}}` from one batch with the
base request beside every adapter, or `{"error": message}` when vLLM refused the
model, so one broken architecture does not hide the others' results.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from ..paths import set_cpu_engine_defaults

# Engine settings for tiny float32 models: small context, every adapter of a run resident at once.
ENGINE_DEFAULTS: dict[str, Any] = {
    "dtype": "float32",
    "enable_lora": True,
    "max_model_len": 128,
    "max_num_seqs": 16,
    "gpu_memory_utilization": 0.3,
    "distributed_executor_backend": "uni",
}


def greedy_run(run: dict[str, Any]) -> dict[str, Any]:
    """Base and adapter greedy ids for one model, from one multi-LoRA batch."""
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    adapters: dict[str, str] = run["adapters"]
    llm = LLM(
        model=run["model"],
        max_lora_rank=run["max_lora_rank"],
        max_loras=max(1, len(adapters)),
        max_cpu_loras=max(1, len(adapters)),
        **ENGINE_DEFAULTS,
    )
    try:
        names = [None, *adapters]
        requests = [None if n is None else LoRARequest(n, i, adapters[n]) for i, n in enumerate(names)]
        params = SamplingParams(temperature=0.0, max_tokens=run["max_tokens"], ignore_eos=True)
        outputs = llm.generate([run["prompt"]] * len(names), params, lora_request=requests, use_tqdm=False)
        ids = [list(o.outputs[0].token_ids) for o in outputs]
        return {"base": ids[0], "adapters": dict(zip(adapters, ids[1:]))}
    finally:
        del llm
        gc.collect()  # the engine and its KV cache go before the next model's


def main(argv: list[str]) -> int:
    plan_path, results_path = argv
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    set_cpu_engine_defaults()
    results = []
    for run in json.loads(Path(plan_path).read_text()):
        try:
            results.append(greedy_run(run))
        except Exception:  # noqa: BLE001 - reported per model; the next model still runs
            results.append({"error": traceback.format_exc()})
    Path(results_path).write_text(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
