"""A real `t2l-vllm serve` process on loopback, shared by the end-to-end tests (started by `t2l_vllm.testing.servers`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from t2l_vllm.testing import servers

API_KEY = "t2l-test-key"
CACHE_ENTRIES = 16


@dataclass
class Server:
    """A running test server: the harness's handle, and what the tests ask of the server."""

    handle: servers.Server
    adapter_dir: Path
    model: str = "tiny"
    native_lora: str = "native-lora"
    api_key: str = API_KEY

    @property
    def url(self) -> str:
        return self.handle.url

    @property
    def process(self):
        return self.handle.process

    @property
    def log(self) -> Path:
        return self.handle.log

    def client(self):
        from openai import OpenAI

        return OpenAI(base_url=f"{self.url}/v1", api_key=API_KEY, max_retries=0, timeout=120)

    def metrics(self) -> dict[str, float]:
        """t2l_* samples from /metrics, by their full name with labels."""
        return {name: value for name, value in self.handle.metrics().items() if name.startswith("t2l_")}

    def adapter_folders(self) -> int:
        """Generated adapter folders under --adapter-dir (its adapter service's private folder)."""
        return sum(1 for p in self.adapter_dir.glob("t2l_vllm-adapters-*/t2l-*"))

    def alive(self) -> bool:
        return self.process.poll() is None and httpx.get(f"{self.url}/health", timeout=30).status_code == 200


@contextlib.contextmanager
def failing_the_test() -> Iterator[None]:
    """A server that did not start or stop fails the test with the harness's message (the log's tail)."""
    try:
        yield
    except servers.ServerFailed as err:
        pytest.fail(str(err), pytrace=False)


@contextlib.contextmanager
def running_server(work: Path, extra_args: list[str], env: dict[str, str] | None = None, health_timeout_s: float = 300,
                   cli_options: tuple[str, ...] = ()) -> Iterator[Server]:
    """Starts `t2l-vllm serve` on a free loopback port; stops it and checks the clean-up.

    `cli_options` go before `serve` (`-v`: t2l_vllm's own logging at INFO)."""
    adapter_dir = work / "adapters"
    options = [
        "--adapter-cache-entries", str(CACHE_ENTRIES), "--adapter-dir", str(adapter_dir),
        # a batching window wide enough that 64 client threads on a loaded 2-core CI machine land in it
        "--hypernet-batch-wait-ms", "20",
        "--api-key", API_KEY,
        "--dtype", "float32", "--gpu-memory-utilization", "0.3", "--max-model-len", "512",
        "--max-loras", "2", "--max-cpu-loras", "2", "--max-num-seqs", "32", "--served-model-name", "tiny",
        *extra_args,
    ]
    with failing_the_test(), servers.t2l_serve(work, options, cli_options=cli_options, env=env, health_timeout_s=health_timeout_s,
                                               must_stop_on_sigterm=True) as handle:
        yield Server(handle, adapter_dir)
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
    return servers.free_port


@pytest.fixture(scope="session")
def start_server():
    """`running_server` for tests that need a server with their own options."""
    return running_server

