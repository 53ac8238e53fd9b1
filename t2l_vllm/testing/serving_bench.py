"""What the serving benchmarks (`benchmarks/serve_throughput.py`, `scale_out.py`, `working_set.py`, `soak.py`) share.

The model name they serve, their prompts, the body of one completion request, one
streamed request timed to its first token, and the options of a small CPU server.
The server processes themselves are started by `servers`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

SERVED_NAME = "base"
PROMPTS = (
    "Question: which planet in the solar system is the largest? Answer:",
    "Translate to French: The weather is lovely today and we are going to the park.",
    "Summarise: The committee met on Tuesday and agreed to postpone the vote until spring.",
    "Review: The battery lasts two days but the screen scratches easily. Sentiment:",
    "Tom has 3 apples and buys 4 more, then gives 2 to Anna. How many apples does he have?",
    "Write a haiku about a lighthouse in the fog.",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "List three differences between mitochondria and chloroplasts:",
)


@dataclass(frozen=True)
class RequestResult:
    ttft_s: float
    completion_tokens: int


def cpu_server_options(adapter_dir: Path, max_loras: int = 4, *, prefix_caching: bool = False, extra: Sequence[str] = ()) -> list[str]:
    """`t2l-vllm serve` options of a small float32 server serving `SERVED_NAME` (after `--host/--port`; `extra` last, so it wins).

    Prefix caching is off unless asked for, so that no request reuses another's prefill."""
    return ["--served-model-name", SERVED_NAME, "--max-model-len", "512", *([] if prefix_caching else ["--no-enable-prefix-caching"]),
            "--disable-uvicorn-access-log", "--dtype", "float32", "--gpu-memory-utilization", "0.2",
            "--max-loras", str(max_loras), "--max-cpu-loras", str(2 * max_loras), "--adapter-dir", str(adapter_dir), *extra]


def body(prompt: str, max_tokens: int, model: str = SERVED_NAME, description: str | None = None,
         stream: bool = True) -> dict[str, Any]:
    """A greedy `/v1/completions` body that makes exactly `max_tokens` (`ignore_eos`); streamed with the usage chunk."""
    payload: dict[str, Any] = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                               "ignore_eos": True, "stream": stream}
    if stream:
        payload["stream_options"] = {"include_usage": True}
    if description is not None:
        payload["task_description"] = description
    return payload


async def stream_one(client: httpx.AsyncClient, payload: dict[str, Any], headers: dict[str, str] | None = None) -> RequestResult:
    """One streamed completion: the time to the first chunk carrying a choice (the first generated token,
    whose text may be empty for a partial UTF-8 byte) and the completion tokens of the usage chunk."""
    start = time.perf_counter()
    ttft, tokens = None, 0
    async with client.stream("POST", "/v1/completions", json=payload, headers=headers) as response:
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {(await response.aread()).decode()[:500]}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if ttft is None and chunk.get("choices"):
                ttft = time.perf_counter() - start
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    if ttft is None:
        raise RuntimeError("the stream ended without a token")
    return RequestResult(ttft, tokens)
