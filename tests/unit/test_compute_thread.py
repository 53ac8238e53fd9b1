"""The one thread a process's torch work runs in, and the cache's passes on it."""

from __future__ import annotations

import asyncio
import threading

import pytest

from t2l_vllm.adapter_store import AdapterStore
from t2l_vllm.cache import AdapterCache, CacheSettings
from t2l_vllm.compute_thread import ComputeThread
from t2l_vllm.errors import ConfigError
from t2l_vllm.generator import AdapterGenerator


class ThreadRecordingGenerator(AdapterGenerator):
    """The real generator, noting which thread runs each pass (a spy, not a fake: it generates)."""

    def __init__(self, generator: AdapterGenerator) -> None:
        super().__init__(generator.hypernet, generator.encoder, generator.fingerprint, generator.settings)
        self.threads: list[int] = []

    def embed(self, normals):
        self.threads.append(threading.get_ident())
        return super().embed(normals)

    def generate_from_embeddings(self, texts, embeddings):
        self.threads.append(threading.get_ident())
        return super().generate_from_embeddings(texts, embeddings)


def test_work_runs_in_the_thread_and_a_call_from_inside_it_runs_at_once():
    compute = ComputeThread()
    try:
        assert compute.ident != threading.get_ident()
        assert compute.call(threading.get_ident) == compute.ident
        # From inside, `call` must not queue behind itself (that would never return).
        assert compute.call(lambda: compute.call(threading.get_ident)) == compute.ident
    finally:
        compute.close()


def test_drain_waits_for_work_whose_awaiter_was_cancelled():
    compute = ComputeThread()
    started, release, finished = threading.Event(), threading.Event(), threading.Event()

    def slow() -> None:
        started.set()
        release.wait(5)
        finished.set()

    async def main() -> bool:
        task = asyncio.create_task(compute.run(slow))
        await asyncio.to_thread(started.wait, 5)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        done_at_cancel = finished.is_set()
        threading.Timer(0.05, release.set).start()
        await compute.drain()
        return done_at_cancel

    try:
        assert asyncio.run(main()) is False  # cancelling the awaiter did not stop the work...
        assert finished.is_set()  # ...and drain returned only after it ended
    finally:
        compute.close()


def test_the_cache_runs_every_pass_in_the_thread_it_is_given(generator, tmp_path):
    compute = ComputeThread()
    recording = compute.call(ThreadRecordingGenerator, generator)

    async def main() -> None:
        for threshold in (None, 0.999):  # the plain pass, and the one that compares with kept adapters first
            cache = AdapterCache(recording, AdapterStore(tmp_path / f"store-{threshold}"),
                                 CacheSettings(semantic_threshold=threshold), compute=compute)
            cache.start()
            try:
                for i in range(3):
                    (await cache.acquire(f"Compute thread task {i}: list the nouns.")).release()
            finally:
                await cache.close()

    try:
        asyncio.run(main())
        assert len(recording.threads) >= 6 and set(recording.threads) == {compute.ident}
        assert compute.call(threading.get_ident) == compute.ident  # a given thread outlives the cache
    finally:
        compute.close()


def test_the_service_threads_a_pass_over_the_cores_vllm_reserves_beside_a_cpu_engine():
    from t2l_vllm.generator import GeneratorSettings
    from t2l_vllm.service.server import threads_beside_the_engine

    default = GeneratorSettings()
    assert default.threads == 0
    # No GPU: vLLM serves on the CPU and leaves its reserved cores (one per worker by default) to the rest.
    assert threads_beside_the_engine(default, has_gpu=False, environ={}).threads == 1
    assert threads_beside_the_engine(default, has_gpu=False, environ={"LOCAL_WORLD_SIZE": "2"}).threads == 2
    assert threads_beside_the_engine(default, has_gpu=False, environ={"LOCAL_WORLD_SIZE": "2", "VLLM_CPU_NUM_OF_RESERVED_CPU": "3"}).threads == 3
    # A GPU host's engine leaves the cores free; a count the user gave is kept either way.
    assert threads_beside_the_engine(default, has_gpu=True, environ={}).threads == 0
    assert threads_beside_the_engine(GeneratorSettings(threads=2), has_gpu=False, environ={}).threads == 2
    # A count vLLM's variable cannot be read as is refused by name, not with int()'s message.
    with pytest.raises(ConfigError, match="VLLM_CPU_NUM_OF_RESERVED_CPU must be a whole number of cores, got 'two'"):
        threads_beside_the_engine(default, has_gpu=False, environ={"VLLM_CPU_NUM_OF_RESERVED_CPU": "two"})
