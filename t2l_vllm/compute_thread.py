"""One thread for all of a process's torch work: loading, checks, encoder and hypernetwork passes.

torch's CPU kernels run on OpenMP (libgomp), which keeps a team of worker threads for each
thread that has started a parallel region, for as long as that thread lives. Once a second
thread of the process has started one, libgomp manages more threads than there are cores and
stops its idle workers spinning between regions: they sleep, and every small op of a pass pays
for waking them. Measured on this project's 2-core machine, 2 torch threads, the embedded
default's encoder (MiniLM) on one 17-token description: 7.8 ms while one thread had done all
the process's torch work, loading included, and 14.5-15 ms in either thread once another had
run any; the adapter service's whole pass, 20-21 ms against 13 ms.

So a process that serves passes from a worker thread (the adapter service: its event loop must
stay free) does everything torch does in that one thread, from loading the weights on.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class ComputeThread:
    """A single worker thread; `call` and `run` queue work on it, in order."""

    def __init__(self, name: str = "t2l-compute") -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self.ident: int = self._executor.submit(threading.get_ident).result()

    def call(self, fn: Callable[..., T], *args: object) -> T:
        """`fn(*args)` in the thread, waited for; run at once when called from the thread itself."""
        if threading.get_ident() == self.ident:
            return fn(*args)
        return self._executor.submit(fn, *args).result()

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """`fn(*args)` in the thread, awaited without blocking the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def drain(self) -> None:
        """Waits until the work queued so far, a pass whose awaiter was cancelled included, has ended."""
        await self.run(lambda: None)

    def close(self) -> None:
        """Finishes the queued work and ends the thread."""
        self._executor.shutdown(wait=True)
