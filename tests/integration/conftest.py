"""One tiny vLLM engine (CPU, float32) per test run, shared by every integration test."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def engine(default_paths, generator):
    from t2l_vllm.vllm_plugin.offline import T2LEngine

    with T2LEngine(
        str(default_paths.base_model),
        str(default_paths.hypernet),
        generator=generator,
        dtype="float32",
        gpu_memory_utilization=0.3,
        max_model_len=512,
        max_num_seqs=16,
        max_loras=2,
        max_cpu_loras=4,
    ) as engine:
        yield engine
