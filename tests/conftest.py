"""Shared fixtures: the embedded default (tiny Llama + hypernetwork) and the real MiniLM encoder."""

from __future__ import annotations

import os

import pytest

# vLLM on CPU reserves this much KV cache (GiB); the tiny model needs far less than 1.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def default_paths():
    from t2l_vllm.default_model import default_paths as build

    return build()


@pytest.fixture(scope="session")
def generator(default_paths):
    from t2l_vllm.generator import AdapterGenerator

    return AdapterGenerator.from_checkpoint(default_paths.hypernet)
