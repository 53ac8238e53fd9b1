"""The memory vLLM reserves beside the adapter service: the embedded default's KV cache has its own size.

Without a size, vLLM reserves `gpu_memory_utilization` of the memory for the KV cache (on CPU, of the
host's RAM, which the adapter service and its folders share); `t2l-vllm serve` gives the embedded base model the size it needs,
and a size the user names wins. Read back from vLLM's own `vllm:cache_config_info` on /metrics.
"""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from t2l_vllm.default_model import KV_CACHE_BYTES
from t2l_vllm.paths import CPU_ENGINE_DEFAULTS

pytestmark = pytest.mark.server


def kv_cache_bytes(server) -> int | None:
    """The KV cache size the engine was configured with, as vLLM reports it (None: it was given none)."""
    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    infos = [s for f in text_string_to_metric_families(text) if f.name == "vllm:cache_config_info" for s in f.samples]
    assert infos, "vLLM's /metrics has no vllm:cache_config_info"
    value = infos[0].labels["kv_cache_memory_bytes"]
    return None if value == "None" else int(value)


def test_serve_gives_the_embedded_default_its_kv_cache_size_when_the_user_names_none(start_server, tmp_path):
    # as a user starts it: no VLLM_CPU_KVCACHE_SPACE (the test harness sets one for its tiny models)
    with start_server(tmp_path, [], env={"VLLM_CPU_KVCACHE_SPACE": None}) as server:
        assert kv_cache_bytes(server) == KV_CACHE_BYTES


def test_a_kv_cache_size_in_the_environment_wins_over_the_embedded_defaults(server):
    # the shared test server runs with the harness's CPU engine defaults' VLLM_CPU_KVCACHE_SPACE (GiB)
    harness_bytes = int(CPU_ENGINE_DEFAULTS["VLLM_CPU_KVCACHE_SPACE"]) * 2**30
    assert KV_CACHE_BYTES != harness_bytes
    assert kv_cache_bytes(server) == harness_bytes
