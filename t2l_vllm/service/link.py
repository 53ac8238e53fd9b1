"""A lasting link to the deployment's adapter service, for API servers and the offline engine: it outlives the service.

The service holds only what can be rebuilt (the hypernetwork, the encoder, a cache
of adapters named by their content), and its folders belong to the deployment,
not to it (`AdapterStore`). So when its connection ends (killed, crashed, taken by
the OOM killer), the link:

- answers calls that need the service with `ServiceUnavailableError` (a 503 with
  Retry-After) while it brings one back, and never holds a caller waiting;
- starts a new service, or joins the one another API server of the deployment
  has started meanwhile (the socket lock makes that one per deployment);
- leases again, from the new service, every adapter that its requests in flight
  hold (the new service adopted their folders), so nothing vLLM may still load is
  deleted and nothing is kept once those requests end;
- gives up after `ServiceSettings.max_service_restarts` deaths within
  `service_restart_window_s`, or after that many failed starts in a row: calls
  then fail with `ServiceFailedError`, which says why, and serving without
  adapters goes on.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..adapter_store import StoredAdapter
from ..cache import Lease
from ..errors import T2LError
from ..metrics import RequestMetrics
from .client import AdapterClient
from .protocol import AdapterServiceError, CatalogEntry, Hello, Reported, Routed
from .settings import ServiceSettings

logger = logging.getLogger(__name__)

Status = Literal["up", "restarting", "failed"]
RETRY_AFTER_S = 5  # what a 503 tells a client while the service restarts
_BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 4.0, 8.0)  # between tries to start it again


class ServiceUnavailableError(AdapterServiceError):
    """The adapter service is being restarted; the call can be sent again in `retry_after_s` seconds."""

    retry_after_s = RETRY_AFTER_S


class ServiceFailedError(AdapterServiceError):
    """The adapter service could not be kept running; this server serves without adapters from now on."""


@dataclass
class _Held:
    """A lease a caller holds, and the service's lease behind it (None while the service is down)."""

    stored: StoredAdapter
    inner: Lease | None


class ServiceLink:
    """One process's link to its deployment's adapter service; its methods run on the loop that connected."""

    def __init__(
        self,
        client: AdapterClient,
        socket_path: str,
        settings: ServiceSettings,
        owner_pid: int | None,
        metrics: RequestMetrics | None = None,
    ) -> None:
        self.socket_path, self.settings, self.owner_pid, self.metrics = socket_path, settings, owner_pid, metrics
        self.hello: Hello = client.hello
        self.catalog: dict[str, CatalogEntry] = {}
        self.started = client.started  # whether this process started the service now serving
        self.status: Status = "up"
        self.reason = ""  # why the service is down or failed, for messages and /health
        self._client: AdapterClient | None = None
        self._loop = asyncio.get_running_loop()
        self._tokens = itertools.count(1)
        self._held: dict[int, _Held] = {}
        self._held_lock = threading.Lock()  # leases are released from any thread
        self._deaths: list[float] = []
        self._up = asyncio.Event()
        self._on_removed: list[Callable[[str], None]] = []
        self._on_restored: list[Callable[[Hello], None]] = []
        self._restarting: asyncio.Task | None = None
        self._closing = False
        self._attach(client)

    @classmethod
    async def connect(
        cls, socket_path: str | Path, settings: ServiceSettings, owner_pid: int | None = None, metrics: RequestMetrics | None = None
    ) -> "ServiceLink":
        """The first connection, starting the service if none serves the socket; raises if it cannot start."""
        client = await AdapterClient.connect_or_start(socket_path, settings, owner_pid)
        return cls(client, str(socket_path), settings, owner_pid, metrics)

    def on_removed(self, callback: Callable[[str], None]) -> None:
        """Calls `callback(name)` when the service has removed an adapter's folder."""
        self._on_removed.append(callback)

    def on_restored(self, callback: Callable[[Hello], None]) -> None:
        """Calls `callback(hello)` when a new service serves the deployment after the last one died."""
        self._on_restored.append(callback)

    # --- calls ---------------------------------------------------------------------
    async def acquire(self, description: object) -> Lease:
        return self._track(await self._call(lambda c: c.acquire(description)))

    async def lease_by_name(self, name: str) -> Lease | None:
        lease = await self._call(lambda c: c.lease_by_name(name))
        return None if lease is None else self._track(lease)

    async def route(self, query: str) -> tuple[Routed, Lease | None]:
        decision, lease = await self._call(lambda c: c.route(query))
        return decision, None if lease is None else self._track(lease)

    async def report(self, description: object, nearest: int) -> Reported:
        return await self._call(lambda c: c.report(description, nearest))

    def hold(self, stored: StoredAdapter) -> Lease:
        """A lease kept here while the service is down, for an adapter vLLM already knows; the next
        service is asked for it when it comes, so its folder stays while the request runs."""
        return self._hold(stored, None)

    async def wait_up(self, timeout_s: float) -> None:
        """Waits (bounded) until the service serves; raises what a call would raise if it does not."""
        if self.status == "restarting":
            try:
                await asyncio.wait_for(self._up.wait(), timeout_s)
            except asyncio.TimeoutError:
                pass
        self._check_up()

    async def close(self) -> None:
        self._closing = True
        if self._restarting is not None:
            self._restarting.cancel()
        if self._client is not None:
            await self._client.close()

    def close_now(self) -> None:
        """Closes the connection from any thread, even after the event loop is gone (at exit)."""
        self._closing = True
        if self._client is not None:
            self._client.close_now()

    # --- plumbing ----------------------------------------------------------------------
    async def _call(self, call):
        client = self._check_up()
        try:
            return await call(client)
        except AdapterServiceError:  # the connection ended during the call
            self._check_up()
            raise

    def _check_up(self) -> AdapterClient:
        if self.status == "up" and self._client is not None:
            return self._client
        if self.status == "failed":
            raise ServiceFailedError(
                f"the adapter service could not be kept running ({self.reason}), so this server makes no adapters any more; "
                "requests without `task_description` are still served. Fix the cause and restart the server."
            )
        raise ServiceUnavailableError(
            f"the adapter service stopped ({self.reason}) and is being restarted; send the request again in a few seconds."
        )

    def _attach(self, client: AdapterClient) -> None:
        self._client = client
        self.hello, self.started = client.hello, client.started
        self.catalog = {entry.id: entry for entry in client.hello.catalog}  # the tasks clients may name as `model`
        client.on_removed(self._removed)
        client.on_lost(self._lost)
        self.status, self.reason = "up", ""
        self._up.set()

    def _removed(self, name: str) -> None:
        for callback in self._on_removed:
            callback(name)

    def _track(self, inner: Lease) -> Lease:
        return self._hold(inner.stored, inner)

    def _hold(self, stored: StoredAdapter, inner: Lease | None) -> Lease:
        token = next(self._tokens)
        with self._held_lock:
            self._held[token] = _Held(stored, inner)
        return Lease(stored, lambda _name: self._release(token))

    def _release(self, token: int) -> None:
        with self._held_lock:
            held = self._held.pop(token, None)
        if held is not None and held.inner is not None:
            held.inner.release()

    def _lost(self) -> None:
        """The connection ended without our asking: the service is gone."""
        if self._closing:
            return
        self._client = None
        self._up.clear()
        now = time.monotonic()
        self._deaths = [t for t in self._deaths if now - t < self.settings.service_restart_window_s] + [now]
        with self._held_lock:
            for held in self._held.values():
                held.inner = None  # that service's leases died with it
        if len(self._deaths) > self.settings.max_service_restarts:
            self._fail(f"it died {len(self._deaths)} times within {self.settings.service_restart_window_s:g} s")
            return
        self.status, self.reason = "restarting", f"it died at {time.strftime('%H:%M:%S')}"
        logger.error("t2l_vllm: the adapter service has gone; starting it again (base-model requests are served meanwhile).")
        self._restarting = self._loop.create_task(self._restart(), name="t2l-service-restart")

    def _fail(self, reason: str) -> None:
        self.status, self.reason = "failed", reason
        self._up.set()  # waiters learn it now
        if self.metrics is not None:
            self.metrics.service_restarts.labels(result="failed").inc()
        logger.error("t2l_vllm: the adapter service is not restarted again: %s. Requests with `task_description` are refused "
                     "from now on; requests without it are served.", reason)

    async def _restart(self) -> None:
        failures: list[str] = []  # each failed try's error
        while not self._closing:
            try:
                client = await AdapterClient.connect_or_start(self.socket_path, self.settings, self.owner_pid)
            except (T2LError, OSError) as err:
                failures.append(str(err))
                if len(failures) >= self.settings.max_service_restarts:
                    self._fail(f"{len(failures)} tries to start it failed: {_each_once(failures)}")
                    return
                logger.warning("t2l_vllm: the adapter service did not start (%s); trying again", err)
                await asyncio.sleep(_BACKOFF_S[min(len(failures) - 1, len(_BACKOFF_S) - 1)])
                continue
            await self._reconcile(client)
            self._attach(client)
            if self.metrics is not None:
                self.metrics.service_restarts.labels(result="started" if client.started else "joined").inc()
            logger.warning("t2l_vllm: the adapter service is back (pid %d).", client.hello.pid)
            for callback in self._on_restored:
                callback(client.hello)
            return

    async def _reconcile(self, client: AdapterClient) -> None:
        """Leases again from the new service what this process's requests still hold."""
        with self._held_lock:
            held = list(self._held.items())
        for token, entry in held:
            lease = await client.lease_by_name(entry.stored.name)
            with self._held_lock:
                still = self._held.get(token)
                if still is not None:
                    still.inner = lease
            if still is None and lease is not None:
                lease.release()  # the request ended meanwhile


def _each_once(errors: list[str]) -> str:
    """The errors of failed tries for a message: the one they all had, or each try's in order (a try
    that hung reads differently from one that found a corrupt checkpoint, and both matter)."""
    if len(set(errors)) == 1:
        return f"each with: {errors[0]}"
    return "; ".join(f"try {i}: {error}" for i, error in enumerate(errors, 1))


class BlockingServiceLink:
    """`ServiceLink` on a private event loop thread, for callers without an event loop (the offline engine).

    A call that finds the service gone waits (bounded) for the link to bring it back and tries once
    more; if it cannot, it raises the link's error. It never hangs.
    """

    def __init__(self, socket_path: str | Path, settings: ServiceSettings, restart_timeout_s: float = 120.0) -> None:
        self.restart_timeout_s = restart_timeout_s
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="t2l-adapter-link-loop", daemon=True)
        self._thread.start()
        try:
            self.link: ServiceLink = self._run(ServiceLink.connect(socket_path, settings))
        except BaseException:
            self._stop_loop()
            raise

    def acquire_all(self, descriptions) -> list[Lease]:
        """Leases for all descriptions at once (one batched pass for the misses), or the first error."""

        async def acquire_all() -> list[Lease]:
            for attempt in (1, 2):
                if attempt == 2:
                    await self.link.wait_up(self.restart_timeout_s)
                results = await asyncio.gather(*(self.link.acquire(d) for d in descriptions), return_exceptions=True)
                errors = [r for r in results if isinstance(r, BaseException)]
                if not errors:
                    return results  # type: ignore[return-value]
                for result in results:
                    if isinstance(result, Lease):
                        result.release()
                if attempt == 2 or not any(isinstance(e, ServiceUnavailableError) for e in errors):
                    raise errors[0]
            raise AssertionError("unreachable")

        return self._run(acquire_all())

    def close(self, timeout_s: float = 60.0) -> None:
        """Disconnects; if this link started the service, waits for it to remove its folders and stop."""
        from .client import wait_until_stopped

        from ..adapter_store import remove_deployment_store

        if not self._loop.is_closed():
            self._run(self.link.close())
            self._stop_loop()
        if self.link.started or self.link.status == "failed":
            if wait_until_stopped(self.link.socket_path, timeout_s):
                remove_deployment_store(self.link.settings.adapter_dir, self.link.socket_path, os.getpid())

    def _run(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()
