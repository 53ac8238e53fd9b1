"""Whether vLLM's engine core ended on its own under an API server running in this process.

vLLM 0.32 stops a lone API server (the one `t2l-vllm serve` runs in its own process)
when the engine core dies, and the process then exits with status 0, exactly as
after a requested stop: a supervisor (systemd, Kubernetes) cannot tell a crash from
a shutdown, and does not restart it. With several API servers vLLM's launcher
raises instead, and the process exits non-zero. This record closes the gap: the
endpoint plugin notes the engine core processes this process started, and the
launcher, once vLLM returns, fails if one of them ended with a non-zero status,
which is vLLM's own test of a failed engine (`monitor_engine_liveness`). A SIGTERM
to the server's process drains requests and ends the engine with 0; a SIGTERM to
the whole process group (systemd's default `KillMode=control-group`) reaches vLLM's
worker first, which fails the engine and the requests in flight: that is reported
as the failure it is.
"""

from __future__ import annotations

import signal
from multiprocessing.process import BaseProcess
from typing import Any

from .internals import engine_core_processes


class EngineExits:
    """The engine core processes started by this process, and how they ended.

    It travels on vLLM's parsed options; a copy handed to another API server
    process starts empty there (that process starts no engine).
    """

    def __init__(self) -> None:
        self._engines: list[BaseProcess] = []

    def __getstate__(self) -> dict[str, Any]:
        return {"_engines": []}  # process handles belong to the process that started them

    def watch_children(self) -> None:
        """Notes this process's engine core children; call once the engine is running."""
        self._engines = engine_core_processes()

    def failure(self) -> str | None:
        """What went wrong, if an engine core process ended with a non-zero status; None otherwise."""
        for process in self._engines:
            if process.exitcode not in (0, None):
                return (f"vLLM's engine core process {process.name} (pid {process.pid}) {how_it_ended(process.exitcode)} "
                        "before the server stopped it, so requests in flight were answered with an error.")
        return None


def how_it_ended(exitcode: int) -> str:
    """A process's end in words, from its exit code (negative: the signal that killed it)."""
    if exitcode >= 0:
        return f"exited with status {exitcode} (its log above says why)"
    try:
        name = signal.Signals(-exitcode).name
    except ValueError:
        name = f"signal {-exitcode}"
    why = {
        "SIGKILL": "nothing can catch it: the kernel's out-of-memory killer sends it (see `dmesg`), as does `kill -9`",
        "SIGTERM": "it reached the engine directly, as a SIGTERM to the whole process group does (systemd's default); "
                   "send it to the server's process alone to let requests drain",
        "SIGSEGV": "a crash in native code",
    }.get(name, "")
    return f"was killed by {name}" + (f" ({why})" if why else "")
