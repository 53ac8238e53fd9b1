"""The adapter cache and the hypernetwork batcher, for a server's event loop.

A description becomes a *lease* on a stored adapter (a PEFT folder vLLM can load):

    acquire(description)
      -> hit: the name is resident (LRU over lru-dict, bounded by entries and bytes)
      -> coalesced: the name is being generated; wait for that generation
      -> miss: queue it; the batcher gathers up to `max_batch_size` misses, waiting at
         most `max_wait_ms` after the first, and runs ONE encoder + hypernetwork pass
         for all of them in a worker thread (never on the event loop)

A lease pins its adapter until released: an adapter evicted while pinned keeps its
folder until the last lease ends, because a queued or running vLLM request may
still load it. Disk and memory are therefore bounded by the cache size plus the
adapters of requests in flight.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from lru import LRU

from .adapter_store import AdapterStore, StoredAdapter
from .descriptions import adapter_name
from .errors import ConfigError, T2LError
from .generator import AdapterGenerator
from .metrics import T2LMetrics

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CacheSettings:
    """Bounds of the adapter cache and of the hypernetwork batches."""

    max_entries: int = 256
    max_bytes: int = 4 * 2**30
    max_batch_size: int = 32
    max_wait_ms: float = 5.0

    def __post_init__(self) -> None:
        for name in ("max_entries", "max_bytes", "max_batch_size"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"`{name}` must be positive, got {getattr(self, name)}.")
        if self.max_wait_ms < 0:
            raise ConfigError(f"`max_wait_ms` must be >= 0, got {self.max_wait_ms}.")


@dataclass
class Lease:
    """An adapter pinned for one request; call `release` exactly once when it is done."""

    stored: StoredAdapter
    _release: Callable[[str], None] = field(repr=False)
    _released: bool = field(default=False, repr=False)

    @property
    def name(self) -> str:
        return self.stored.name

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._release(self.stored.name)


@dataclass
class _Pending:
    """A generation in progress and the waiters it will pin on success."""

    text: str
    future: asyncio.Future
    waiters: int = 0
    pinned: bool = False


class AdapterCache:
    """Description -> pinned stored adapter, with single-flight batched generation.

    All methods run on one event loop; only the generation pass and the folder
    writes run in the worker thread. `on_remove` is called (on the loop) just
    before an adapter's folder is deleted, so the server can forget its name.
    """

    def __init__(
        self,
        generator: AdapterGenerator,
        store: AdapterStore,
        settings: CacheSettings = CacheSettings(),
        metrics: T2LMetrics | None = None,
        on_remove: Callable[[StoredAdapter], None] | None = None,
    ) -> None:
        self.generator = generator
        self.store = store
        self.settings = settings
        self.metrics = metrics
        self._on_remove = on_remove
        self._resident: LRU = LRU(settings.max_entries)
        self._resident_bytes = 0
        self._retired: dict[str, StoredAdapter] = {}  # evicted, kept while pinned
        self._pins: dict[str, int] = {}
        self._pending: dict[str, _Pending] = {}
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="t2l-hypernet")
        self._batcher: asyncio.Task | None = None

    # --- public ------------------------------------------------------------
    def start(self) -> None:
        if self._batcher is None:
            self._batcher = asyncio.get_running_loop().create_task(self._run_batcher(), name="t2l-batcher")

    async def close(self) -> None:
        """Stops the batcher, fails waiting requests, and removes every folder."""
        if self._batcher is not None:
            self._batcher.cancel()
            await asyncio.gather(self._batcher, return_exceptions=True)
            self._batcher = None
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_exception(T2LError("the server is shutting down."))
        self._pending.clear()
        self._executor.shutdown(wait=True)
        self.store.close()

    def __len__(self) -> int:
        return len(self._resident)

    @property
    def resident_bytes(self) -> int:
        return self._resident_bytes

    def name_for(self, description: object) -> str:
        """The adapter name a description gets; raises `InvalidDescriptionError`."""
        return self.generator.name_for(description)

    async def acquire(self, description: object) -> Lease:
        """A pinned adapter for the description; raises a `T2LError` for bad input."""
        text = self.generator.normalize(description)
        name = adapter_name(self.generator.key(text))
        stored = self._lookup(name)
        if stored is not None:
            self._count("hit")
            self._pin(name)
            return Lease(stored, self._unpin)
        pending = self._pending.get(name)
        if pending is None:
            self._count("miss")
            pending = _Pending(text, asyncio.get_running_loop().create_future())
            self._pending[name] = pending
            self._queue.put_nowait(name)
        else:
            self._count("coalesced")
        pending.waiters += 1
        try:
            stored = await asyncio.shield(pending.future)
        except asyncio.CancelledError:
            if pending.pinned and pending.future.done() and pending.future.exception() is None:
                self._unpin(name)  # the batcher pinned it for us; give it back
            else:
                pending.waiters -= 1
            raise
        return Lease(stored, self._unpin)

    # --- residency ---------------------------------------------------------
    def _lookup(self, name: str) -> StoredAdapter | None:
        stored = self._resident.get(name)
        if stored is None and name in self._retired:  # evicted but still pinned: revive it
            stored = self._retired.pop(name)
            self._insert(stored)
        return stored

    def _insert(self, stored: StoredAdapter) -> None:
        if stored.name in self._resident:
            return
        while len(self._resident) >= self.settings.max_entries or (
            self._resident and self._resident_bytes + stored.nbytes > self.settings.max_bytes
        ):
            self._evict_least_recent()
        self._resident[stored.name] = stored
        self._resident_bytes += stored.nbytes
        self._update_gauges()

    def _evict_least_recent(self) -> None:
        name, stored = self._resident.popitem(least_recent=True)
        self._resident_bytes -= stored.nbytes
        if self.metrics:
            self.metrics.cache_evictions.inc()
        if self._pins.get(name, 0) > 0:
            self._retired[name] = stored
        else:
            self._remove(stored)

    def _remove(self, stored: StoredAdapter) -> None:
        if self._on_remove is not None:
            self._on_remove(stored)
        self.store.remove(stored.name)

    def _pin(self, name: str, count: int = 1) -> None:
        self._pins[name] = self._pins.get(name, 0) + count

    def _unpin(self, name: str) -> None:
        left = self._pins.get(name, 0) - 1
        if left > 0:
            self._pins[name] = left
            return
        self._pins.pop(name, None)
        retired = self._retired.pop(name, None)
        if retired is not None:
            self._remove(retired)
            self._update_gauges()

    def _count(self, result: str) -> None:
        if self.metrics:
            self.metrics.cache_lookups.labels(result=result).inc()

    def _update_gauges(self) -> None:
        if self.metrics:
            self.metrics.adapters_resident.set(len(self._resident))
            self.metrics.adapter_bytes_resident.set(self._resident_bytes)
            self.metrics.adapters_retired.set(len(self._retired))

    # --- batcher -------------------------------------------------------------
    async def _run_batcher(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            names = [await self._queue.get()]
            deadline = loop.time() + self.settings.max_wait_ms / 1000
            while len(names) < self.settings.max_batch_size:
                timeout = deadline - loop.time()
                if timeout <= 0 and self._queue.empty():
                    break
                try:
                    names.append(await asyncio.wait_for(self._queue.get(), max(timeout, 0)))
                except asyncio.TimeoutError:
                    break
            await self._generate(names)

    async def _generate(self, names: list[str]) -> None:
        texts = [self._pending[name].text for name in names]
        start = time.perf_counter()
        try:
            results = await asyncio.get_running_loop().run_in_executor(self._executor, self._generate_and_store, texts)
        except Exception as err:  # noqa: BLE001 - a bug must fail these requests, not the batcher
            logger.exception("hypernetwork pass failed for %d descriptions", len(texts))
            results = [T2LError(f"adapter generation failed: {err}")] * len(texts)
        if self.metrics:
            self.metrics.hypernet_passes.inc()
            self.metrics.hypernet_batch_size.observe(len(texts))
            self.metrics.generation_seconds.observe(time.perf_counter() - start)
        for name, result in zip(names, results):
            pending = self._pending.pop(name)
            if isinstance(result, BaseException):
                pending.future.set_exception(result)
                continue
            if self.metrics:
                self.metrics.generations.inc()
            if pending.waiters > 0:
                self._pin(name, pending.waiters)
                pending.pinned = True
            self._insert(result)
            pending.future.set_result(result)

    def _generate_and_store(self, texts: list[str]) -> list[StoredAdapter | T2LError]:
        """Worker thread: one batched pass, then one PEFT folder per adapter."""
        out: list[StoredAdapter | T2LError] = []
        for result in self.generator.generate_batch(texts):
            out.append(result if isinstance(result, T2LError) else self.store.put(result))
        return out
