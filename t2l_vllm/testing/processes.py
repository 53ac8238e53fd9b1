"""Stopping the process groups that tests start (servers and their engine, worker and service children)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess


def stop_process_group(process: subprocess.Popen, timeout_s: float = 60) -> bool:
    """SIGTERM to the process's group (a test may have stopped it already), SIGKILL after `timeout_s`;
    True when SIGTERM was enough."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
        return True
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        return False
