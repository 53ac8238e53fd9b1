"""Shared fixtures: the embedded default (the toy base model + its hypernetwork) and the real MiniLM encoder."""

from __future__ import annotations

import os

import pytest

from t2l_vllm.paths import set_cpu_engine_defaults

set_cpu_engine_defaults()  # for the engine the tests start in this process; servers get them from the harness
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ENGINE_CACHE_ENTRIES = 8


@pytest.fixture(scope="session")
def default_paths():
    from t2l_vllm.default_model import default_paths as build

    return build()


@pytest.fixture(scope="session")
def generator(default_paths):
    from t2l_vllm.generator import AdapterGenerator

    return AdapterGenerator.from_checkpoint(default_paths.hypernet)


@pytest.fixture(scope="session")
def engine(default_paths):
    """One tiny vLLM engine (CPU, float32) for the whole run: the offline API, with a small
    adapter cache so that tests can drive it past its bounds."""
    from t2l_vllm import T2LEngine
    from t2l_vllm.cache import CacheSettings

    with T2LEngine(
        str(default_paths.base_model),
        str(default_paths.hypernet),
        cache_settings=CacheSettings(max_entries=ENGINE_CACHE_ENTRIES),
        dtype="float32",
        gpu_memory_utilization=0.3,
        max_model_len=512,
        max_num_seqs=16,
        max_loras=2,
        max_cpu_loras=4,
    ) as engine:
        yield engine
