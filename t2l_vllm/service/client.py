"""Clients of the adapter service: the async one API servers use, and a blocking one for the offline engine.

`connect_or_start` connects to the deployment's service, starting it first if no
process serves the socket yet. Starting and connecting happen under an exclusive
lock on `SOCKET.lock`, and a stopping service unlinks its socket under the same
lock, so two API servers starting together get one service, and a client never
connects to a service that has decided to stop.
"""

from __future__ import annotations

import asyncio
import fcntl
import itertools
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..cache import Lease
from ..errors import ConfigError
from .locks import alive_lock_path, remove_socket_lock, socket_lock
from .protocol import (
    MAX_LINE_BYTES,
    Acquire,
    AdapterBody,
    AdapterServiceError,
    Failed,
    Hello,
    LeaseByName,
    Leased,
    Release,
    Removed,
    Report,
    Reported,
    Route,
    Routed,
    decode,
    encode,
    read_message,
)
from .settings import ServiceSettings

logger = logging.getLogger(__name__)


def service_socket_path(owner: str) -> Path:
    """Where the service of `owner` (a deployment, or one offline engine) listens: private to this user."""
    return Path(tempfile.gettempdir()) / f"t2l_vllm-{os.getuid()}" / f"service-{owner}.sock"


class AdapterClient:
    """One connection to the adapter service; methods run on the event loop that connected.

    `release` of a lease may be called from any thread.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, hello: Hello, socket_path: str, started: bool) -> None:
        self.hello = hello
        self.socket_path = socket_path
        self.started = started  # whether this client started the service
        self._reader, self._writer = reader, writer
        self._loop = asyncio.get_running_loop()
        self._numbers = itertools.count(1)
        self._pending: dict[int, asyncio.Future] = {}
        self._on_removed: list[Callable[[str], None]] = []
        self._on_lost: list[Callable[[], None]] = []
        self._lost: AdapterServiceError | None = None
        self._closing = False
        self._reading = self._loop.create_task(self._read_forever(), name="t2l-adapter-client")

    @classmethod
    async def connect_or_start(cls, socket_path: str | Path, settings: ServiceSettings, owner_pid: int | None = None) -> "AdapterClient":
        """Connects to the service at `socket_path`, starting it if none serves it; `owner_pid`: the process
        that owns the deployment (default: this one), which names its adapter folders."""
        owner = os.getpid() if owner_pid is None else owner_pid
        sock, hello, started = await asyncio.to_thread(connect_or_start, str(socket_path), settings, owner)
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=MAX_LINE_BYTES)
        return cls(reader, writer, hello, str(socket_path), started)

    def on_removed(self, callback: Callable[[str], None]) -> None:
        """Calls `callback(name)` when the service has removed an adapter's folder."""
        self._on_removed.append(callback)

    def on_lost(self, callback: Callable[[], None]) -> None:
        """Calls `callback()` if the service goes away while this client is open."""
        self._on_lost.append(callback)

    async def acquire(self, description: object) -> Lease:
        """A leased adapter for the description; raises the service's `T2LError` for bad input."""
        reply: Leased = await self._call(Acquire(next(self._numbers), description))
        assert reply.adapter is not None
        return self._lease(reply.adapter)

    async def lease_by_name(self, name: str) -> Lease | None:
        """A lease on an adapter the service keeps, by name (a client reusing a generated name)."""
        reply: Leased = await self._call(LeaseByName(next(self._numbers), name))
        return None if reply.adapter is None else self._lease(reply.adapter)

    async def route(self, query: str) -> tuple[Routed, Lease | None]:
        """The router's choice for a query without a description, and the lease on the adapter that
        serves it (None: the base model), in one round trip."""
        reply: Routed = await self._call(Route(next(self._numbers), query))
        return reply, None if reply.adapter is None else self._lease(reply.adapter)

    async def report(self, description: object, nearest: int) -> Reported:
        """The description's adapter, made now or found in the cache, and the router's nearest tasks
        (none without `--router`); raises the service's `T2LError` for bad input, as `acquire` does."""
        return await self._call(Report(next(self._numbers), description, nearest))

    async def close(self) -> None:
        self._closing = True
        self._writer.close()
        await asyncio.gather(self._reading, return_exceptions=True)

    def close_now(self) -> None:
        """Closes the connection from any thread, even after the event loop is gone (at exit)."""
        self._closing = True
        sock = self._writer.get_extra_info("socket")
        if sock is None:
            return
        try:
            with socket.socket(fileno=os.dup(sock.fileno())) as duplicate:
                duplicate.shutdown(socket.SHUT_RDWR)  # ends the connection for every descriptor of it
        except OSError:
            pass

    # --- plumbing ------------------------------------------------------------------
    async def _call(self, request: Acquire | LeaseByName | Route | Report) -> Any:
        if self._lost is not None:
            raise self._lost
        future = self._loop.create_future()
        self._pending[request.id] = future
        self._writer.write(encode(request))
        return await future  # cancelled: the reader gives back a lease that arrives later

    def _release(self, lease_number: int) -> None:
        def send() -> None:
            if self._lost is None and not self._writer.is_closing():
                self._writer.write(encode(Release(lease_number)))

        if self._loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            send()
        else:
            self._loop.call_soon_threadsafe(send)

    def _lease(self, body: AdapterBody) -> Lease:
        number = body.lease
        assert number is not None
        return Lease(body.stored(), lambda _name: self._release(number))

    async def _read_forever(self) -> None:
        try:
            while (message := await read_message(self._reader)) is not None:
                self._dispatch(message)
        except (ConnectionError, ValueError) as err:
            logger.error("lost the adapter service: %s", err)
        self._lost = AdapterServiceError("the adapter service is gone; this server cannot make adapters any more.")
        for future in self._pending.values():
            if not future.done():
                future.set_exception(self._lost)
        self._pending.clear()
        if not self._closing:
            logger.error("the adapter service closed the connection")
            for callback in self._on_lost:
                callback()

    def _dispatch(self, message: Any) -> None:
        if isinstance(message, Removed):
            for callback in self._on_removed:
                callback(message.name)
            return
        future = self._pending.pop(getattr(message, "id", None), None)
        if future is None:
            return
        adapter = getattr(message, "adapter", None)
        if future.cancelled():
            if adapter is not None and adapter.lease is not None:
                self._release(adapter.lease)  # its waiter went away: give the lease straight back
            return
        if isinstance(message, Failed):
            future.set_exception(message.error())
        else:
            future.set_result(message)


# --- starting and connecting (blocking; callers on an event loop run it in a thread) -----------


def connect_or_start(socket_path: str, settings: ServiceSettings, owner_pid: int) -> tuple[socket.socket, Hello, bool]:
    """A connected socket, the service's hello, and whether this call started the service."""
    Path(socket_path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with socket_lock(socket_path):
        # Read the hello under the lock: once it has arrived the service counts this client.
        try:
            return _greeted(socket_path, started=False)
        except (FileNotFoundError, ConnectionError):
            pass  # no service; or one just killed, whose socket the kernel refuses or resets as it closes
        Path(socket_path).unlink(missing_ok=True)  # a service that was killed leaves its socket file
        try:
            _start(socket_path, settings, owner_pid)
        except BaseException:
            remove_socket_lock(socket_path)  # no service: leave nothing behind
            raise
        return _greeted(socket_path, started=True)


def wait_until_stopped(socket_path: str, timeout_s: float) -> bool:
    """Waits until no service for `socket_path` runs (it has removed its folders); False on timeout."""
    deadline = time.monotonic() + timeout_s
    try:
        alive = open(alive_lock_path(socket_path))  # noqa: SIM115 - closed below
    except FileNotFoundError:  # a stopping service removes it last
        return True
    with alive:
        while True:
            try:
                fcntl.flock(alive, fcntl.LOCK_SH | fcntl.LOCK_NB)
                fcntl.flock(alive, fcntl.LOCK_UN)
                return True
            except BlockingIOError:
                if time.monotonic() > deadline:
                    logger.warning("the adapter service for %s did not stop within %.0f s", socket_path, timeout_s)
                    return False
                time.sleep(0.05)


def _greeted(socket_path: str, started: bool) -> tuple[socket.socket, Hello, bool]:
    """A socket connected to the service and its hello (closed again if the hello does not come)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(socket_path)
        return sock, _read_hello(sock), started
    except BaseException:
        sock.close()
        raise


def _read_hello(sock: socket.socket) -> Hello:
    line = bytearray()
    while not line.endswith(b"\n"):  # byte by byte: nothing after the hello is consumed here
        byte = sock.recv(1)
        if not byte:
            raise AdapterServiceError("the adapter service closed the connection before greeting.")
        line += byte
    hello = decode(bytes(line))
    if not isinstance(hello, Hello):
        raise AdapterServiceError(f"the adapter service greeted with {hello!r}.")
    return hello


def _start(socket_path: str, settings: ServiceSettings, owner_pid: int) -> None:
    """Starts the service, detached in a process group of its own (a signal to the server's process
    group, or vLLM killing an API server's process tree, must not stop it while other clients use it),
    and waits until it is ready, at most `settings.service_start_timeout_s`: a start that hangs
    is killed, the detached service with it (it stays in that process group).

    The group stays in the server's session, not a session of its own: Linux's scheduler shares the
    CPU between sessions (autogroups) before threads, and vLLM's engine core and worker poll busily
    while they serve, so a service alone in its session ran about a tenth of the time it was ready to
    beside a running CPU engine (measured on 2 cores: a one-thread pass of 3-4 descriptions 384-440 ms
    against 43 ms in the server's session; docs/benchmarks.md)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "t2l_vllm.service", socket_path, str(owner_pid)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, process_group=0,
    )
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(settings.to_json().encode())
    process.stdin.close()
    timeout_s = settings.service_start_timeout_s
    deadline = time.monotonic() + timeout_s
    line = b""
    while not line.endswith(b"\n"):
        ready, _, _ = select.select([process.stdout], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            _kill_group(process)
            raise AdapterServiceError(f"the adapter service did not become ready within {timeout_s:g} s "
                                      "(--service-start-timeout-s), so it was stopped.")
        chunk = os.read(process.stdout.fileno(), 4096)
        if not chunk:
            break
        line += chunk
    process.stdout.close()
    process.wait()  # the detaching parent; the service itself is its child
    if not line:
        raise AdapterServiceError("the adapter service exited before it was ready (see its log above).")
    status = json.loads(line)
    if "error" in status:
        raise ConfigError(status["error"])


def _kill_group(process: subprocess.Popen) -> None:
    """Kills a start's whole process group: the detaching parent (`process`, its leader) and the service it forked."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # all gone already
    process.wait()
    assert process.stdout is not None
    process.stdout.close()
