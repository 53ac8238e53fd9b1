"""Stopping the process groups that tests start (servers and their engine, worker and service children), and finding them."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path


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


def pids_with_argument(argument: str) -> list[int]:
    """Processes that have `argument`, exactly, among their command-line arguments (a service's socket path)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and argument.encode() in (entry / "cmdline").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            pass  # ended while we looked
    return found


def adapter_service_pids(owner_pid: int) -> list[int]:
    """The adapter service processes of the deployment `owner_pid` owns (their socket is named by it)."""
    done = subprocess.run(["pgrep", "-f", f"t2l_vllm.service .*serve-{owner_pid}.sock"], capture_output=True, text=True)
    return [int(pid) for pid in done.stdout.split()]


def children_named(parent_pid: int, fragment: str) -> list[int]:
    """Descendant processes of `parent_pid` whose command line holds `fragment` (vLLM names its processes,
    e.g. `VLLM::EngineCore`, `VLLM::APIServer_1`)."""
    done = subprocess.run(["pgrep", "-f", fragment], capture_output=True, text=True)
    found = []
    for pid in map(int, done.stdout.split()):
        ancestor = pid
        while ancestor > 1:
            try:
                ancestor = int(open(f"/proc/{ancestor}/stat").read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                break
            if ancestor == parent_pid:
                found.append(pid)
                break
    return found
