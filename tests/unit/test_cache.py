"""The adapter cache and batcher on a real event loop, with the real generator and store."""

from __future__ import annotations

import asyncio
import gc
from dataclasses import replace

import pytest
from prometheus_client import CollectorRegistry

from t2l_vllm.adapter_store import AdapterStore
from t2l_vllm.cache import AdapterCache, CacheSettings
from t2l_vllm.errors import InvalidDescriptionError
from t2l_vllm.metrics import T2LMetrics


def run_with_cache(generator, tmp_path, settings: CacheSettings, scenario):
    """Runs `scenario(cache, removed, metrics)` on a fresh loop with a fresh cache."""

    async def main():
        removed: list[str] = []
        metrics = T2LMetrics(CollectorRegistry())
        cache = AdapterCache(generator, AdapterStore(tmp_path / "store"), replace(settings, removal_grace_s=settings_grace(settings)), metrics, on_remove=lambda s: removed.append(s.name))
        cache.start()
        try:
            return await scenario(cache, removed, metrics)
        finally:
            await cache.close()

    return asyncio.run(main())


def settings_grace(settings: CacheSettings) -> float:
    """Tests remove at once unless they set a grace period themselves."""
    return settings.removal_grace_s if settings.removal_grace_s != CacheSettings().removal_grace_s else 0.0


def value(metric, **labels) -> float:
    return (metric.labels(**labels) if labels else metric)._value.get()


def test_concurrent_misses_share_one_pass_and_one_generation_per_name(generator, tmp_path):
    async def scenario(cache, removed, metrics):
        descriptions = [f"Cache task {i % 8}: tag parts of speech." for i in range(64)]
        leases = await asyncio.gather(*(cache.acquire(d) for d in descriptions))
        names = {d: {l.name for l, e in zip(leases, descriptions) if e == d} for d in descriptions}
        for lease in leases:
            lease.release()
        return names, value(metrics.generations), value(metrics.hypernet_passes), value(metrics.cache_lookups, result="coalesced")

    names, generations, passes, coalesced = run_with_cache(generator, tmp_path, CacheSettings(max_wait_ms=50), scenario)
    assert all(len(n) == 1 for n in names.values()) and len(names) == 8
    assert (generations, passes, coalesced) == (8, 1, 56)


def test_an_evicted_adapter_keeps_its_folder_while_leased(generator, tmp_path):
    async def scenario(cache, removed, metrics):
        held = await cache.acquire("Held task: summarise legal contracts.")
        for i in range(3):
            (await cache.acquire(f"Filler task {i}: count words.")).release()
        still_there = held.stored.path.is_dir() and held.name not in removed
        held.release()
        return held, still_there, removed, len(cache)

    held, still_there, removed, resident = run_with_cache(generator, tmp_path, CacheSettings(max_entries=2), scenario)
    assert still_there
    assert held.name in removed and not held.stored.path.exists()
    assert resident == 2


def test_evicted_and_removed_adapters_are_freed(generator, tmp_path):
    """Nothing keeps an evicted adapter alive once its folder is gone (lru-dict's `popitem` did: a
    10,000-description soak grew the adapter service by about 2 MiB per 1,000 descriptions)."""
    from t2l_vllm.adapter_store import StoredAdapter

    def alive() -> int:
        gc.collect()
        return sum(type(o) is StoredAdapter for o in gc.get_objects())  # not isinstance: it reads deprecated torch attributes

    async def scenario(cache, removed, metrics):
        before = alive()
        for i in range(12):
            (await cache.acquire(f"Freed task {i}: sort the numbers.")).release()
        return alive() - before, len(removed)

    extra, removed = run_with_cache(generator, tmp_path, CacheSettings(max_entries=2), scenario)
    assert removed == 10
    assert extra <= 2  # the two resident; the ten removed are gone


def test_the_byte_bound_limits_residency(generator, tmp_path):
    one = generator.generate(["size probe"])[0].nbytes

    async def scenario(cache, removed, metrics):
        for i in range(5):
            (await cache.acquire(f"Byte-bound task {i}.")).release()
        return len(cache), cache.resident_bytes, sum(1 for p in (tmp_path / "store").glob("*/*") if not p.name.startswith("."))

    resident, nbytes, folders = run_with_cache(generator, tmp_path, CacheSettings(max_bytes=int(2.5 * one)), scenario)
    assert resident == 2 and nbytes == 2 * one and folders == 2


def test_bad_descriptions_fail_alone(generator, tmp_path):
    async def scenario(cache, removed, metrics):
        good = asyncio.ensure_future(cache.acquire("Write haiku about autumn."))
        with pytest.raises(InvalidDescriptionError):
            await cache.acquire("   ")
        lease = await good
        lease.release()
        return lease.name

    assert run_with_cache(generator, tmp_path, CacheSettings(), scenario).startswith("t2l-")


def test_a_cancelled_waiter_does_not_leak_its_pin(generator, tmp_path):
    async def scenario(cache, removed, metrics):
        waiter = asyncio.ensure_future(cache.acquire("Cancelled task: list prime numbers."))
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        for i in range(3):  # push it out of a 1-entry cache
            (await cache.acquire(f"Pusher {i}.")).release()
        return removed, cache._pins

    removed, pins = run_with_cache(generator, tmp_path, CacheSettings(max_entries=1), scenario)
    assert generator.name_for("Cancelled task: list prime numbers.") in removed
    assert pins == {}


@pytest.mark.parametrize("threshold,expected_generations", [(None, 2), (0.9, 1)])
def test_semantic_cache_reuses_a_close_description(generator, tmp_path, threshold, expected_generations):
    async def scenario(cache, removed, metrics):
        first = await cache.acquire("Translate English sentences into French.")
        second = await cache.acquire("Translate english sentences to French.")
        again = await cache.acquire("Translate english sentences to French.")
        for lease in (first, second, again):
            lease.release()
        return first.name, second.name, again.name, value(metrics.generations), value(metrics.cache_lookups, result="semantic_hit")

    first, second, again, generations, semantic = run_with_cache(generator, tmp_path, CacheSettings(semantic_threshold=threshold), scenario)
    assert generations == expected_generations
    assert second == again
    if threshold is None:
        assert first != second and semantic == 0
    else:
        assert first == second and semantic == 2


def test_a_released_adapter_is_removed_only_after_the_grace_period(generator, tmp_path):
    async def scenario(cache, removed, metrics):
        held = await cache.acquire("Grace task: rhyme words.")
        (await cache.acquire("Grace filler.")).release()  # evicts the held one from a 1-entry cache
        held.release()
        at_release = list(removed)
        await asyncio.sleep(0.3)
        return held.name, at_release, list(removed)

    name, at_release, later = run_with_cache(generator, tmp_path, CacheSettings(max_entries=1, removal_grace_s=0.2), scenario)
    assert name not in at_release and name in later


def test_semantic_reuse_of_an_evicted_adapter_keeps_its_folder(generator, tmp_path):
    """A reuse candidate evicted by fresh adapters of the same pass becomes resident again,
    and must not be deleted when its pins end."""

    async def scenario(cache, removed, metrics):
        first = await cache.acquire("Translate English sentences into French.")
        first.release()
        leases = await asyncio.gather(
            cache.acquire("Filler one: count vowels."),
            cache.acquire("Filler two: sort numbers."),
            cache.acquire("Translate english sentences to French."),
        )
        for lease in leases:
            lease.release()
        reused = leases[2].stored
        return reused, reused.path.is_dir(), cache._lookup(reused.name)[0] is not None

    reused, exists, resident = run_with_cache(generator, tmp_path, CacheSettings(max_entries=2, semantic_threshold=0.9, max_wait_ms=50), scenario)
    assert not resident or exists, "a resident adapter must have its folder"


def test_adapters_waiting_out_the_grace_are_capped_at_the_cache_size(generator, tmp_path):
    async def scenario(cache, removed, metrics):
        for i in range(10):
            (await cache.acquire(f"Cap task {i}: label colours.")).release()
        return len(cache), len(cache._retired), sum(1 for p in (tmp_path / "store").glob("*/*") if not p.name.startswith("."))

    resident, retired, folders = run_with_cache(generator, tmp_path, CacheSettings(max_entries=2, removal_grace_s=60), scenario)
    assert (resident, retired, folders) == (2, 2, 4)


def test_misses_arriving_during_a_pass_join_the_next_pass_with_one_generation_per_name(generator, tmp_path):
    """Continuous batching, no waiting window: the first miss starts a pass alone, the rest
    (queued while it ran) share the next one, and every name is generated exactly once."""
    async def scenario(cache, removed, metrics):
        first = asyncio.ensure_future(cache.acquire("Continuous task 0: tag the verbs."))
        await asyncio.sleep(0)  # the batcher takes it and starts a pass
        rest = [f"Continuous task {i % 6 + 1}: tag the verbs." for i in range(24)]
        leases = await asyncio.gather(first, *(cache.acquire(d) for d in rest))
        for lease in leases:
            lease.release()
        return value(metrics.generations), value(metrics.hypernet_passes), len({lease.name for lease in leases})

    generations, passes, names = run_with_cache(generator, tmp_path, CacheSettings(max_wait_ms=0), scenario)
    assert names == 7 and generations == 7
    assert passes == 2, passes  # one for the first miss, one for the six that queued behind it


def test_a_failing_pass_fails_only_its_own_waiters_and_the_next_pass_succeeds(generator, tmp_path):
    """A pass that raises (the named test-only fault: a marked description makes it raise)."""
    from t2l_vllm.errors import GenerationError
    from t2l_vllm.service.fault_injection import TestOnlyFailingGenerator

    async def scenario(cache, removed, metrics):
        cached = await cache.acquire("Cached before the fault: count the nouns.")
        doomed = ["FAULT-MARKER: summarise.", "Shares the failing pass: translate.", "FAULT-MARKER: summarise."]
        failed = await asyncio.gather(*(cache.acquire(d) for d in doomed), return_exceptions=True)
        hit = await cache.acquire("Cached before the fault: count the nouns.")  # a hit needs no pass
        retried = await cache.acquire("Shares the failing pass: translate.")  # its own pass now
        for lease in (cached, hit, retried):
            lease.release()
        return failed, value(metrics.hypernet_passes), value(metrics.adapter_pins), cache._pins

    failing = TestOnlyFailingGenerator(generator, "FAULT-MARKER")
    failed, passes, pins_gauge, pins = run_with_cache(failing, tmp_path, CacheSettings(max_wait_ms=200), scenario)
    assert all(isinstance(f, GenerationError) and "adapter generation failed" in str(f) for f in failed), failed
    assert passes == 3  # the cached one's, the failed one (all three waiters), the retry's
    assert (pins_gauge, pins) == (0, {})


def test_the_pins_gauge_counts_leases_held(generator, tmp_path):
    async def scenario(cache, removed, metrics):
        leases = await asyncio.gather(*(cache.acquire(f"Gauge task {i % 3}.") for i in range(7)))
        held = value(metrics.adapter_pins)
        for lease in leases:
            lease.release()
        return held, value(metrics.adapter_pins)

    assert run_with_cache(generator, tmp_path, CacheSettings(max_wait_ms=50), scenario) == (7, 0)


def test_a_mix_goes_through_the_semantic_path_as_its_weighted_embedding(generator, tmp_path):
    """With the semantic cache on, a mix is embedded from its parts (not as text) and a repeat of it is reused."""
    mix = [{"description": "Translate English sentences into French.", "weight": 0.5},
           {"description": "Answer with a single word.", "weight": 0.5}]

    async def scenario(cache, removed, metrics):
        first = await cache.acquire(mix)
        again = await cache.acquire(list(reversed(mix)))
        for lease in (first, again):
            lease.release()
        return first.name, again.name, value(metrics.generations)

    first, again, generations = run_with_cache(generator, tmp_path, CacheSettings(semantic_threshold=0.99), scenario)
    assert first == again == generator.name_for(mix)
    assert generations == 1
