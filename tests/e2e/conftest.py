"""A real `t2l-vllm serve` process on loopback, shared by the end-to-end tests."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from t2l_vllm.testing.processes import stop_process_group

API_KEY = "t2l-test-key"
CACHE_ENTRIES = 16


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    adapter_dir: Path
    model: str
    native_lora: str
    log: Path
    api_key: str = API_KEY

    def client(self):
        from openai import OpenAI

        return OpenAI(base_url=f"{self.url}/v1", api_key=API_KEY, max_retries=0, timeout=120)

    def metrics(self) -> dict[str, float]:
        """t2l_* samples from /metrics, by their full name with labels."""
        text = httpx.get(f"{self.url}/metrics", timeout=30).text
        values = {}
        for line in text.splitlines():
            if line.startswith("t2l_"):
                name, value = line.rsplit(" ", 1)
                values[name] = float(value)
        return values

    def adapter_folders(self) -> int:
        """Generated adapter folders under --adapter-dir (its adapter service's private folder)."""
        return sum(1 for p in self.adapter_dir.glob("t2l_vllm-adapters-*/t2l-*"))

    def alive(self) -> bool:
        return self.process.poll() is None and httpx.get(f"{self.url}/health", timeout=30).status_code == 200


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(work: Path, extra_args: list[str], env: dict[str, str] | None = None, health_timeout_s: float = 300,
                   cli_options: tuple[str, ...] = ()) -> Iterator[Server]:
    """Starts `t2l-vllm serve` on a free loopback port; stops it and checks the clean-up.

    `cli_options` go before `serve` (`-v`: t2l_vllm's own logging at INFO)."""
    port = free_port()
    work.mkdir(parents=True, exist_ok=True)
    adapter_dir = work / "adapters"
    log = work / "server.log"
    command = [
        sys.executable, "-m", "t2l_vllm", *cli_options, "serve",
        "--adapter-cache-entries", str(CACHE_ENTRIES), "--adapter-dir", str(adapter_dir),
        # a batching window wide enough that 64 client threads on a loaded 2-core CI machine land in it
        "--hypernet-batch-wait-ms", "20",
        "--host", "127.0.0.1", "--port", str(port), "--api-key", API_KEY,
        "--dtype", "float32", "--gpu-memory-utilization", "0.3", "--max-model-len", "512",
        "--max-loras", "2", "--max-cpu-loras", "2", "--max-num-seqs", "32", "--served-model-name", "tiny",
        *extra_args,
    ]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_LOGGING_LEVEL": "WARNING", **(env or {})}
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + health_timeout_s
    while True:
        if process.poll() is not None:
            pytest.fail(f"server exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            pytest.fail(f"server did not become healthy:\n{log.read_text()[-4000:]}")
        time.sleep(1)
    try:
        yield Server(url, process, adapter_dir, "tiny", "native-lora", log)
    finally:
        if not stop_process_group(process):
            pytest.fail(f"server did not stop on SIGTERM:\n{log.read_text()[-4000:]}")
    left = [p.name for p in adapter_dir.iterdir()] if adapter_dir.exists() else []
    assert not left, f"adapter folders left after shutdown: {left[:5]}"


@pytest.fixture(scope="session")
def server(default_paths, generator, tmp_path_factory):
    work = tmp_path_factory.mktemp("server")
    native = generator.generate(["A LoRA registered the ordinary vLLM way."])[0].save_peft(work / "native")
    with running_server(work, ["--lora-modules", f"native-lora={native}"]) as server:
        yield server


@pytest.fixture(scope="session")
def new_port():
    """A function returning a free loopback port, for processes the tests start beside servers."""
    return free_port


@pytest.fixture(scope="session")
def start_server():
    """`running_server` for tests that need a server with their own options."""
    return running_server

