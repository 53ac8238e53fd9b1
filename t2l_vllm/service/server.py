"""The adapter service: one process per deployment (per node) that owns everything that embeds text.

Every API server process of a deployment, and the offline engine, reach the same
service over a Unix socket. It holds the one copy of the encoder and hypernetwork
(on the GPU or the CPU), the router, the adapter cache and the folder store, so
that:

- memory for the hypernetwork is paid once per deployment, not once per API server;
- concurrent misses from every API server share one batched pass, and a
  description is generated once however many API servers ask for it;
- a folder is deleted only when no process's request holds a lease on it, which a
  per-process cache cannot know.

A client's leases live as long as its connection: a process that dies releases
them all. The service stops when its last client has gone, removing its folders,
so a deployment killed outright leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import shutil
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ..adapter_store import AdapterStore, StoredAdapter
from ..cache import AdapterCache, Lease
from ..compute_thread import ComputeThread
from ..errors import ConfigError, InvalidDescriptionError, T2LError
from ..generator import AdapterGenerator, GeneratorSettings
from ..metrics import T2LMetrics
from ..progress import progress
from ..router import EmbeddingRouter
from ..descriptions import catalog_id
from ..strength import check_strength
from .fault_injection import with_test_faults
from .locks import alive_lock_path, lock_file, remove_socket_lock, socket_lock
from .protocol import (
    MAX_LINE_BYTES,
    Acquire,
    AdapterBody,
    CatalogEntry,
    Failed,
    Hello,
    LeaseByName,
    Leased,
    Message,
    Release,
    Reply,
    Report,
    Reported,
    Request,
    Removed,
    Route,
    Routed,
    RouterInfo,
    encode,
    read_message,
)
from .settings import ServiceSettings

logger = logging.getLogger(__name__)

# What vLLM's CPU backend leaves to all but its workers: this many cores. Its own default is one per
# worker on x86 and Arm; it counts them in LOCAL_WORLD_SIZE, which the service inherits when vLLM set it
# before the service started (else one is assumed: right at tensor parallel 1).
RESERVED_CORES_ENV = "VLLM_CPU_NUM_OF_RESERVED_CPU"
CPU_WORKERS_ENV = "LOCAL_WORLD_SIZE"


def threads_beside_the_engine(settings: GeneratorSettings, has_gpu: bool, environ: Mapping[str, str]) -> GeneratorSettings:
    """The generator settings the service loads with: `threads` 0 (its default) on a host without a GPU,
    where vLLM runs on the CPU, becomes the cores vLLM reserves beside its workers.

    vLLM's CPU worker binds its OpenMP threads to every other core and keeps them busy while it
    serves, so a pass threaded over all cores waits, at every parallel region, for the thread that
    shares a core with the worker. Measured beside a serving engine on 2 cores (docs/benchmarks.md,
    thread budget): one thread gave shorter passes during arm d and more tokens/s than two. Given
    threads, and hosts with a GPU (the engine's cores are free), keep their setting.
    """
    if settings.threads or has_gpu:
        return settings
    name = next((n for n in (RESERVED_CORES_ENV, CPU_WORKERS_ENV) if environ.get(n)), None)
    if name is None:
        return replace(settings, threads=1)
    try:
        return replace(settings, threads=max(1, int(environ[name])))
    except ValueError:
        raise ConfigError(f"{name} must be a whole number of cores, got {environ[name]!r}.") from None


# A service nobody connects to (its starter died between start and connect) stops after this.
FIRST_CLIENT_TIMEOUT_S = 120.0


@dataclass(eq=False)  # one per connection: kept in a set by identity
class _Session:
    """One client connection and the leases it holds."""

    writer: asyncio.StreamWriter
    leases: dict[int, Lease] = field(default_factory=dict)
    numbers: Any = field(default_factory=lambda: itertools.count(1))
    open: bool = True

    def send(self, message: Message) -> None:
        if self.open and not self.writer.is_closing():
            self.writer.write(encode(message))

    def keep(self, lease: Lease) -> int | None:
        """Holds a lease for the client; a client already gone gives it straight back."""
        if not self.open:
            lease.release()
            return None
        number = next(self.numbers)
        self.leases[number] = lease
        return number

    def release(self, number: int) -> None:
        lease = self.leases.pop(number, None)
        if lease is not None:
            lease.release()

    def release_all(self) -> None:
        self.open = False
        for number in list(self.leases):
            self.release(number)


class AdapterService:
    """Serves acquire / lease / route / release to the clients of one deployment."""

    def __init__(self, settings: ServiceSettings, metrics_dir: str, private_metrics: bool, socket_path: str, owner_pid: int) -> None:
        self.settings = settings
        self.metrics_dir = metrics_dir
        self.private_metrics = private_metrics
        self.metrics = T2LMetrics()
        # Every torch step, from loading on, runs in this one thread (see `compute_thread.py`).
        self.compute = ComputeThread("t2l-torch")
        try:
            generator_settings = threads_beside_the_engine(settings.generator, torch.cuda.is_available(), os.environ)
            self.generator = self.compute.call(
                lambda: with_test_faults(AdapterGenerator.from_checkpoint(settings.hypernet, generator_settings)))
            self.compute.call(self._check_strength)
            self.router = None if settings.router is None else self.compute.call(
                EmbeddingRouter.from_settings, settings.router, settings.generator.max_description_chars)
        except BaseException:
            self.compute.close()
            raise
        # The deployment's folder, named by its socket and owner: what a service of it that died left is adopted.
        self.store = AdapterStore(settings.adapter_dir, deployment=socket_path, owner_pid=owner_pid)
        self._sessions: set[_Session] = set()
        self._tasks: set[asyncio.Task] = set()
        self._stop: asyncio.Event | None = None
        self._ever_connected = False
        self._socket_path = socket_path
        self._socket_inode: int | None = None
        self.cache: AdapterCache | None = None
        self._preloaded: list[Lease] = []  # held by the service itself: never released
        self._trained: dict[str, Lease] = {}  # router task -> its trained adapter, held like the preloaded
        # Each request's handler, (session, request) -> its reply: the one dispatch table.
        self._handlers: dict[type, Callable[[_Session, Any], Awaitable[Reply]]] = {
            Acquire: self._acquire, LeaseByName: self._lease_by_name, Route: self._route, Report: self._report,
        }

    def _check_strength(self) -> None:
        """Holds probe adapters against the served base model's weights (`strength.py`): a scaling bug is
        logged as a warning, or refuses the start with `strict`."""
        base = self.settings.base_model or self.generator.config.base.name
        found = check_strength(self.generator, self.settings.hypernet, base)
        if found.problem is None:
            return
        message = f"the hypernetwork's {found.problem}. Run `t2l-vllm check --hypernet {self.settings.hypernet} --model {base}` for the report."
        if self.settings.generator.strict:
            raise ConfigError(message + " Refused (`--strict`).")
        logger.warning("%s", message)

    def hello(self) -> Hello:
        config = self.generator.config
        router = self.router
        return Hello(
            pid=os.getpid(),
            hypernet=self.settings.hypernet,
            variant=config.variant,
            fingerprint=self.generator.fingerprint,
            base_model=config.base.name,
            rank=config.lora.rank,
            target_modules=list(config.lora.target_modules),
            cache_entries=self.settings.cache.max_entries,
            cache_bytes=self.settings.cache.max_bytes,
            store=str(self.store.root),
            metrics_dir=self.metrics_dir if self.private_metrics else None,
            preloaded=[AdapterBody.of(lease.stored) for lease in self._preloaded],
            router=None if router is None else RouterInfo(
                len(router.library.tasks), str(router.library.path), router.threshold, router.fallback),
            catalog=self._catalog(),
        )

    def _catalog(self) -> list[CatalogEntry]:
        """The tasks clients may name as their model: the router library's, then the preloaded descriptions."""
        entries = []
        if self.router is not None:
            for task in self.router.library.tasks:
                trained = self._trained.get(task.name)
                entries.append(CatalogEntry(catalog_id(task.name), task.descriptions[0], None if trained is None else trained.name))
        for description, lease in zip(self.settings.preload, self._preloaded):
            entries.append(CatalogEntry(catalog_id(description), description, lease.name))
        return entries

    async def run(self, ready: Callable[[], None]) -> None:
        """Serves until the last client has gone (or none came, or SIGTERM), then cleans up."""
        loop = asyncio.get_running_loop()
        socket_path = self._socket_path
        alive = lock_file(alive_lock_path(socket_path))  # noqa: F841 - held until the process ends
        self._stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stop.set)
        self.cache = AdapterCache(self.generator, self.store, self.settings.cache, self.metrics, on_remove=self._removed,
                                  compute=self.compute)
        self.cache.start()
        server = None
        try:
            await self._preload()
            self._keep_trained()
            server = await asyncio.start_unix_server(self._serve_client, path=socket_path, limit=MAX_LINE_BYTES)
            os.chmod(socket_path, 0o600)
            self._socket_inode = os.stat(socket_path).st_ino
            loop.call_later(FIRST_CLIENT_TIMEOUT_S, self._stop_if_nobody_came)
            ready()
            await self._stop.wait()
        finally:
            if server is not None:
                server.close()
            for session in list(self._sessions):
                session.release_all()
            await self.cache.close()
            self.compute.close()
            self._close_metrics()
            await asyncio.to_thread(self._remove_socket_files)

    def _remove_socket_files(self) -> None:
        """The socket (unless a new service has taken its path meanwhile) and the lock files: a stopped
        service leaves nothing. The `.alive` lock is still held (until the process ends) after its file is gone.

        A service that never served leaves the socket lock to the client starting it, which holds it
        (and removes it) while it waits for this process.
        """
        if self._socket_inode is not None:
            with socket_lock(self._socket_path):
                socket_file = Path(self._socket_path)
                if socket_file.exists() and socket_file.stat().st_ino == self._socket_inode:
                    socket_file.unlink()
                remove_socket_lock(self._socket_path)
        Path(alive_lock_path(self._socket_path)).unlink(missing_ok=True)

    async def _preload(self) -> None:
        """Generates the preloaded descriptions (batched passes) and pins them for the service's life."""
        assert self.cache is not None
        cache = self.cache
        with progress(len(self.settings.preload), "t2l_vllm: preloading adapters", "adapter") as bar:

            async def acquire(description: str) -> Lease:
                try:
                    return await cache.acquire(description)
                finally:
                    bar.update(1)

            results = await asyncio.gather(*(acquire(d) for d in self.settings.preload), return_exceptions=True)
        self._preloaded = [r for r in results if isinstance(r, Lease)]
        failed = [(i, r) for i, r in enumerate(results) if not isinstance(r, Lease)]
        if failed:
            i, err = failed[0]
            raise ConfigError(f"preloaded description {i + 1} of {len(results)} was refused: {err}")

    def _keep_trained(self) -> None:
        """Copies in and pins the trained adapters the router library names, one per task.

        vLLM is started with `--max-lora-rank` = the hypernetwork's rank, so a trained
        adapter of a higher rank could never load: refused here, at start-up.
        """
        assert self.cache is not None
        if self.router is None:
            return
        rank = self.generator.config.lora.rank
        for task, folder in self.router.library.trained().items():
            config = json.loads((Path(folder) / "adapter_config.json").read_text(encoding="utf-8"))
            if int(config.get("r", 0)) > rank:
                raise ConfigError(f"router task `{task}`: its adapter {folder} has rank {config.get('r')}, above the "
                                  f"hypernetwork's {rank}, which is vLLM's --max-lora-rank here; train it with rank <= {rank}.")
            self._trained[task] = self.cache.keep_trained(folder)

    async def _stop_if_idle(self) -> None:
        """Stops once the last client has gone, unless another connected meanwhile."""

        def unlink_if_idle() -> bool:
            with socket_lock(self._socket_path):  # no client is half-way through connecting now
                if self._sessions:
                    return False
                Path(self._socket_path).unlink(missing_ok=True)
                return True

        if await asyncio.to_thread(unlink_if_idle):
            self._stop.set()  # type: ignore[union-attr]

    def _stop_if_nobody_came(self) -> None:
        if not self._ever_connected:
            logger.warning("no client connected within %.0f s; stopping", FIRST_CLIENT_TIMEOUT_S)
            task = asyncio.get_running_loop().create_task(self._stop_if_idle())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _close_metrics(self) -> None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(os.getpid(), self.metrics_dir)
        if self.private_metrics:
            shutil.rmtree(self.metrics_dir, ignore_errors=True)

    def _removed(self, stored: StoredAdapter) -> None:
        for session in self._sessions:
            session.send(Removed(stored.name))

    async def _serve_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = _Session(writer)
        self._sessions.add(session)
        self._ever_connected = True
        session.send(self.hello())
        try:
            while (message := await read_message(reader)) is not None:
                if isinstance(message, Release):
                    session.release(message.lease)
                    continue
                if not isinstance(message, tuple(self._handlers)):
                    raise ValueError(f"a client sent {message.OP!r}, which only the service sends")
                task = asyncio.get_running_loop().create_task(self._answer(session, message))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        except (ConnectionError, ValueError) as err:  # a client that went away or spoke garbage
            logger.warning("dropping a client: %s", err)
        finally:
            session.release_all()
            self._sessions.discard(session)
            writer.close()
            if not self._sessions:
                await self._stop_if_idle()

    async def _answer(self, session: _Session, request: Request) -> None:
        try:
            reply: Reply = await self._handlers[type(request)](session, request)
        except T2LError as err:
            reply = Failed.of(request.id, err)
        except Exception as err:  # noqa: BLE001 - a bug answers this request, not the whole service
            logger.exception("adapter service request %r failed", request.OP)
            reply = Failed.of(request.id, T2LError(f"the adapter service failed: {err}"))
        session.send(reply)

    async def _acquire(self, session: _Session, request: Acquire) -> Leased:
        assert self.cache is not None
        lease = await self.cache.acquire(request.description)
        return Leased(request.id, AdapterBody.of(lease.stored, session.keep(lease)))

    async def _lease_by_name(self, session: _Session, request: LeaseByName) -> Leased:
        assert self.cache is not None
        lease = self.cache.lease_by_name(request.name)
        return Leased(request.id, None if lease is None else AdapterBody.of(lease.stored, session.keep(lease)))

    async def _route(self, session: _Session, request: Route) -> Routed:
        """The router's choice for the query, with the lease on the adapter that serves it: the task's trained
        adapter, or the one generated for its description. A router description the generator refuses (a
        query used as its own description, too long) serves the base model."""
        assert self.cache is not None
        if self.router is None:
            raise T2LError("this deployment has no router (`--router`).")
        decision = (await self.compute.run(self.router.route, [request.query]))[0]
        self.metrics.router_decisions.labels(task=decision.label).inc()
        trained = self._trained.get(decision.task) if decision.task is not None else None
        if trained is not None:
            lease = self.cache.lease_by_name(trained.name)
            if lease is None:
                raise T2LError(f"the trained adapter `{trained.name}` of router task `{decision.task}` is no longer kept.")
        elif decision.description is not None:
            try:
                lease = await self.cache.acquire(decision.description)
            except InvalidDescriptionError:
                return Routed(request.id, None, None, decision.score, "base", None)
        else:
            lease = None
        adapter = None if lease is None else AdapterBody.of(lease.stored, session.keep(lease))
        return Routed(request.id, decision.task, decision.description, decision.score, decision.fallback, adapter)

    async def _report(self, session: _Session, request: Report) -> Reported:
        """The description's adapter got as a request gets it (generated on a miss), how long that took,
        and the router library's `nearest` closest tasks: what the playground shows.

        The adapter is left in the cache, not leased, so the chat requests that follow find it.
        Bad descriptions raise the `InvalidDescriptionError` a request would get.
        """
        assert self.cache is not None
        normal = self.generator.normalize(request.description)
        name = self.generator.name_of(normal)
        start = time.perf_counter()
        lease = self.cache.lease_by_name(name)  # a hit, or None: nothing counted, so `acquire` counts the miss
        found = lease is not None
        if lease is None:
            lease = await self.cache.acquire(request.description)
        milliseconds = (time.perf_counter() - start) * 1000
        lease.release()
        tasks: list[tuple[str, float]] = []
        if self.router is not None and request.nearest > 0:
            text = normal if isinstance(normal, str) else " ".join(part for part, _ in normal.parts)
            tasks = await self.compute.run(self.router.nearest_tasks, text, request.nearest)
        # another name than asked for: a semantic-cache reuse, nothing made
        return Reported(request.id, lease.name, not found and lease.name == name, milliseconds, tuple(tasks))
