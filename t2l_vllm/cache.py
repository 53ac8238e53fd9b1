"""The adapter cache and the hypernetwork batcher, for a server's event loop.

A description becomes a *lease* on a stored adapter (a PEFT folder vLLM can load):

    acquire(description)
      -> hit: the name is resident (LRU over lru-dict, bounded by entries and bytes)
      -> coalesced: the name is being generated; wait for that generation
      -> miss: queue it; the batcher runs ONE encoder + hypernetwork pass for up to
         `max_batch_size` queued misses in a worker thread (never on the event loop),
         as soon as the previous pass is done (a miss that finds it idle waits at
         most `max_wait_ms` for the rest of its burst)

With `semantic_threshold` set, a miss whose description embeds within that cosine
of a resident adapter's description reuses that adapter instead of generating one
(the check runs inside the batch pass, on the embeddings the pass needs anyway).

A lease pins its adapter until released: an adapter evicted while pinned keeps its
folder until the last lease ends, because a queued or running vLLM request may
still load it, and then `removal_grace_s` longer, because a request whose client
went away is released before vLLM's abort reaches the engine. Disk and memory
are therefore bounded by twice the cache size (resident, and waiting out the
grace) plus the adapters of requests in flight.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from lru import LRU

from .adapter_store import AdapterStore, StoredAdapter
from .adapters import LoRAAdapter
from .compute_thread import ComputeThread
from .descriptions import NormalTask
from .errors import ConfigError, GenerationError, T2LError
from .generator import AdapterGenerator
from .metrics import T2LMetrics

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CacheSettings:
    """Bounds of the adapter cache and of the hypernetwork batches."""

    max_entries: int = field(default=256, metadata={"help": "adapters kept ready"})
    max_bytes: int = field(default=4 * 2**30, metadata={"help": "bound on their total size (bytes here; the CLI flag takes MiB)"})
    max_batch_size: int = field(default=32, metadata={"help": "most descriptions in one hypernetwork pass"})
    max_wait_ms: float = field(default=5.0, metadata={"help": "how long a pass that finds the hypernetwork idle waits for more descriptions"})
    semantic_threshold: float | None = field(
        default=None, metadata={"help": "reuse a cached adapter whose description embeds within this cosine of a new one (none: off)"}
    )
    removal_grace_s: float = 1.0
    adoption_grace_s: float = field(default=60.0, metadata={
        "help": "how long folders left by an adapter service that died are kept unleased before they may go: the time the "
                "API servers have to lease again what their requests in flight still use"})

    def __post_init__(self) -> None:
        for name in ("removal_grace_s", "adoption_grace_s"):
            if getattr(self, name) < 0:
                raise ConfigError(f"`{name}` must be >= 0, got {getattr(self, name)}.")
        if self.semantic_threshold is not None and not -1.0 <= self.semantic_threshold <= 1.0:
            raise ConfigError(f"`semantic_threshold` is a cosine in [-1, 1], got {self.semantic_threshold}.")
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

    text: NormalTask  # normalised: a description or a mix
    future: asyncio.Future
    waiters: int = 0
    pinned: bool = False


class AdapterCache:
    """Description -> pinned stored adapter, with single-flight batched generation.

    All methods run on one event loop; only the generation pass and the folder
    writes run in `compute`, the thread that does the process's torch work (see
    `compute_thread.py`; by default one of the cache's own, ended by `close`).
    `on_remove` is called (on the loop) just before an adapter's folder is
    deleted, so the server can forget its name.
    """

    def __init__(
        self,
        generator: AdapterGenerator,
        store: AdapterStore,
        settings: CacheSettings = CacheSettings(),
        metrics: T2LMetrics | None = None,
        on_remove: Callable[[StoredAdapter], None] | None = None,
        compute: ComputeThread | None = None,
    ) -> None:
        self.generator = generator
        self.store = store
        self.settings = settings
        self.metrics = metrics
        self._on_remove = on_remove
        self._resident: LRU = LRU(settings.max_entries)
        self._resident_bytes = 0
        self._retired: dict[str, StoredAdapter] = {}  # evicted, kept while pinned or in grace
        self._pins: dict[str, int] = {}
        self._pinned = 0  # sum of `_pins`: what /metrics reports, so a leak shows
        self._pending: dict[str, _Pending] = {}
        self._embeddings: dict[str, tuple[StoredAdapter, torch.Tensor]] = {}  # kept name -> its unit task embedding
        self._aliases: LRU = LRU(4 * settings.max_entries)  # description name -> reused adapter name
        self._queue: asyncio.Queue[tuple[str, float]] = asyncio.Queue()  # (name, when it was queued)
        self._idle_since = 0.0  # loop time the last pass ended
        self._owns_compute = compute is None
        self._compute = ComputeThread() if compute is None else compute
        self._batcher: asyncio.Task | None = None

    # --- public ------------------------------------------------------------
    def start(self) -> None:
        """Starts the batcher, and takes in the folders an earlier service of the deployment left
        (`AdapterStore.adopted`): kept, unleased, for `adoption_grace_s`, then removed unless leased."""
        if self._batcher is None:
            self._batcher = asyncio.get_running_loop().create_task(self._run_batcher(), name="t2l-batcher")
        for stored in self.store.adopted:
            self._retired[stored.name] = stored
            asyncio.get_running_loop().call_later(self.settings.adoption_grace_s, self._remove_if_unused, stored.name)
        self._update_gauges()

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
        await self._compute.drain()  # a pass the cancelled batcher left running is done with the store
        if self._owns_compute:
            self._compute.close()
        self.store.close()

    def __len__(self) -> int:
        return len(self._resident)

    @property
    def resident_bytes(self) -> int:
        return self._resident_bytes

    def lease_by_name(self, name: str) -> Lease | None:
        """A lease on a kept adapter by name (a client reusing a generated name), or None."""
        stored, how = self._lookup(name)
        if stored is None:
            return None
        self._count(how)
        self._pin(stored.name)
        return Lease(stored, self._unpin)

    def keep_trained(self, folder: str) -> Lease:
        """A trained PEFT adapter copied into the store and pinned: the caller holds the lease for
        as long as the adapter must stay (a router task's adapter: the service's life)."""
        stored = self.store.put_folder(folder)
        self._insert(stored)
        self._pin(stored.name)
        return Lease(stored, self._unpin)

    async def acquire(self, description: object) -> Lease:
        """A pinned adapter for the description; raises a `T2LError` for bad input."""
        text = self.generator.normalize(description)
        name = self.generator.name_of(text)
        lease = self.lease_by_name(name)
        if lease is not None:
            return lease
        pending = self._pending.get(name)
        if pending is None:
            self._count("miss")
            pending = _Pending(text, asyncio.get_running_loop().create_future())
            self._pending[name] = pending
            self._queue.put_nowait((name, asyncio.get_running_loop().time()))
        else:
            self._count("coalesced")
        pending.waiters += 1
        try:
            stored = await asyncio.shield(pending.future)
        except asyncio.CancelledError:
            if pending.pinned and pending.future.done() and pending.future.exception() is None:
                self._unpin(pending.future.result().name)  # the batcher pinned it for us (maybe a reused adapter)
            else:
                pending.waiters -= 1
            raise
        return Lease(stored, self._unpin)

    # --- residency ---------------------------------------------------------
    def _lookup(self, name: str) -> tuple[StoredAdapter | None, str]:
        """The kept adapter for a name, and how it was found: hit or semantic_hit."""
        target = self._aliases.get(name)
        if target is not None:
            stored, _ = self._lookup(target)
            if stored is not None:
                return stored, "semantic_hit"
            del self._aliases[name]
        stored = self._resident.get(name)
        if stored is None and name in self._retired:  # evicted but its folder is still kept: revive it
            stored = self._retired[name]
            self._insert(stored)
        return stored, "hit"

    def _insert(self, stored: StoredAdapter) -> None:
        self._retired.pop(stored.name, None)  # resident again: no pending removal applies
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
        # Not `popitem`: lru-dict 1.4.1 leaks the (key, value) tuple it returns (one increment too
        # many; amitdev/lru-dict#64), so every adapter evicted that way would stay in memory.
        name, stored = self._resident.peek_last_item()
        del self._resident[name]
        self._resident_bytes -= stored.nbytes
        if self.metrics:
            self.metrics.cache_evictions.inc()
        self._retired[name] = stored
        if self._pins.get(name, 0) == 0:
            self._retire_later(name)

    def _retire_later(self, name: str) -> None:
        """Removes an evicted, unpinned adapter after the grace period, unless revived or pinned.

        At most `max_entries` unpinned adapters wait out their grace at once (the oldest
        goes first), so disk stays bounded however fast new descriptions arrive.
        """
        if self.settings.removal_grace_s == 0:
            self._remove_if_unused(name)
            return
        asyncio.get_running_loop().call_later(self.settings.removal_grace_s, self._remove_if_unused, name)
        waiting = [n for n in self._retired if self._pins.get(n, 0) == 0]
        for oldest in waiting[: max(0, len(waiting) - self.settings.max_entries)]:
            self._remove_if_unused(oldest)

    def _remove_if_unused(self, name: str) -> None:
        if name in self._retired and self._pins.get(name, 0) == 0:
            self._remove(self._retired.pop(name))
            self._update_gauges()

    def _remove(self, stored: StoredAdapter) -> None:
        self._embeddings.pop(stored.name, None)
        if self._on_remove is not None:
            self._on_remove(stored)
        self.store.remove(stored.name)

    def _pin(self, name: str, count: int = 1) -> None:
        self._pins[name] = self._pins.get(name, 0) + count
        self._count_pins(count)

    def _unpin(self, name: str) -> None:
        left = self._pins.get(name, 0) - 1
        self._count_pins(-1)
        if left > 0:
            self._pins[name] = left
            return
        self._pins.pop(name, None)
        if name in self._retired:
            self._retire_later(name)

    def _count(self, result: str) -> None:
        if self.metrics:
            self.metrics.cache_lookups.labels(result=result).inc()

    def _count_pins(self, change: int) -> None:
        self._pinned += change
        if self.metrics:
            self.metrics.adapter_pins.set(self._pinned)

    def _update_gauges(self) -> None:
        if self.metrics:
            self.metrics.adapters_resident.set(len(self._resident))
            self.metrics.adapter_bytes_resident.set(self._resident_bytes)
            self.metrics.adapters_retired.set(len(self._retired))

    # --- batcher -------------------------------------------------------------
    async def _run_batcher(self) -> None:
        """Continuous batching: a pass starts as soon as the hypernetwork is free.

        Misses that queued while a pass ran all go into the next pass at once. Only
        a miss that finds the hypernetwork idle waits up to `max_wait_ms` for the
        rest of its burst, since a pass of 8 costs far less than 8 passes of 1.
        """
        loop = asyncio.get_running_loop()
        while True:
            name, queued_at = await self._queue.get()
            names = [name]
            if queued_at >= self._idle_since:  # it found the hypernetwork idle: let its burst gather
                deadline = queued_at + self.settings.max_wait_ms / 1000
                while len(names) < self.settings.max_batch_size and (timeout := deadline - loop.time()) > 0:
                    try:
                        names.append((await asyncio.wait_for(self._queue.get(), timeout))[0])
                    except asyncio.TimeoutError:
                        break
            while len(names) < self.settings.max_batch_size and not self._queue.empty():
                names.append(self._queue.get_nowait()[0])
            await self._generate(names)
            self._idle_since = loop.time()

    async def _generate(self, names: list[str]) -> None:
        texts = [self._pending[name].text for name in names]
        resident = self._semantic_snapshot()
        for stored in resident[0] if resident else ():
            self._pin(stored.name)  # candidates for reuse keep their folders during the pass
        start = time.perf_counter()
        try:
            results = await self._compute.run(self._generate_and_store, texts, resident)
        except Exception as err:  # noqa: BLE001 - a bug must fail these requests, not the batcher
            logger.exception("hypernetwork pass failed for %d descriptions", len(texts))
            results = [GenerationError(f"adapter generation failed: {err}")] * len(texts)
        if self.metrics:
            self.metrics.hypernet_passes.inc()
            self.metrics.hypernet_batch_size.observe(len(texts))
            self.metrics.generation_seconds.observe(time.perf_counter() - start)
        for name, result in zip(names, results):
            pending = self._pending.pop(name)
            if isinstance(result, BaseException):
                pending.future.set_exception(result)
                continue
            stored, embedding, reused = result
            if reused:
                self._aliases[name] = stored.name
                self._count("semantic_hit")
            elif self.metrics:
                self.metrics.generations.inc()
            if pending.waiters > 0:
                self._pin(stored.name, pending.waiters)
                pending.pinned = True
            if embedding is not None:
                self._embeddings[stored.name] = (stored, embedding)
            self._insert(stored)
            pending.future.set_result(stored)
        for stored in resident[0] if resident else ():
            self._unpin(stored.name)

    def _semantic_snapshot(self) -> tuple[list[StoredAdapter], list[torch.Tensor]] | None:
        """Kept adapters and their embeddings, for the worker thread to compare against (it stacks them:
        torch work stays in that thread)."""
        if self.settings.semantic_threshold is None:
            return None
        return [stored for stored, _ in self._embeddings.values()], [unit for _, unit in self._embeddings.values()]

    def _generate_and_store(
        self, texts: list[NormalTask], resident: tuple[list[StoredAdapter], list[torch.Tensor]] | None
    ) -> list[tuple[StoredAdapter, torch.Tensor | None, bool] | T2LError]:
        """Worker thread: one batched pass (reusing close resident adapters), then PEFT folders."""
        if resident is None:
            return [self._stored(r, None) for r in self.generator.generate_batch(texts)]
        embeddings = self.generator.embed(texts)  # a mix's embedding is its parts', weighted
        units = torch.nn.functional.normalize(embeddings, dim=-1)
        out: list = [None] * len(texts)
        fresh = []
        stored, kept_units = resident
        if stored:
            best, where = (units @ torch.stack(kept_units).T).max(dim=-1)
        for i in range(len(texts)):
            if stored and float(best[i]) >= self.settings.semantic_threshold:  # type: ignore[operator]
                out[i] = (stored[int(where[i])], None, True)
            else:
                fresh.append(i)
        generated = self.generator.generate_from_embeddings([texts[i] for i in fresh], embeddings[fresh])
        for i, result in zip(fresh, generated):
            out[i] = self._stored(result, units[i])
        return out

    def _stored(self, result: LoRAAdapter | T2LError, unit: torch.Tensor | None) -> tuple[StoredAdapter, torch.Tensor | None, bool] | T2LError:
        """Worker thread: the adapter's folder written, or the error that refused it (a full disk fails
        only the adapters it could not take)."""
        if isinstance(result, T2LError):
            return result
        try:
            return self.store.put(result), unit, False
        except T2LError as err:
            return err
