"""What scaling out costs: one server, two API servers, and two replicas behind vllm-router, in one run.

Every shape serves the embedded default (or `--model/--hypernet`) with the same
workload, through the same streaming client:

    warm  K descriptions round-robin, each sent once before timing (cache hits)
    new   a description no request used before (one hypernetwork pass each)
    fleet D descriptions x P prompts (for the replicas: with the session key from
          `t2l_vllm.affinity_headers`, and without it)

Shapes:
    single     one `t2l-vllm serve` (one API server, one engine)
    api2       `t2l-vllm serve --api-server-count 2` (two API servers, one engine, one adapter service)
    replicas   two `t2l-vllm serve` replicas behind `vllm-router --policy consistent_hash`

Reported per shape: output tokens/s and TTFT p50 of `warm` and `new` (and their
ratio to `single`, measured in the same run), adapters generated per description
across the deployment for `fleet`, and the resident memory of every process by
role (API server, engine core, worker, adapter service, router). On 2 CPU cores no
speed-up is expected: the point is that nothing breaks and the overhead is known.

    python benchmarks/scale_out.py [--requests 48 --concurrency 8 --max-tokens 32 --out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil

from t2l_vllm import affinity_headers
from t2l_vllm.testing.servers import ROUTER_INSTALL, replica_set, scrape_metrics, t2l_serve, vllm_router, vllm_router_binary
from t2l_vllm.testing.serving_bench import PROMPTS, body, cpu_server_options, stream_one

SHAPES = ("single", "api2", "replicas")
K = 4
FLEET_DESCRIPTIONS, FLEET_PROMPTS = 12, 4


@contextlib.contextmanager
def deployment(shape: str, work: Path) -> Iterator[tuple[str, list[str], list[int]]]:
    """Starts a shape; yields (the URL clients use, every server URL, the pids to measure)."""
    work.mkdir(parents=True, exist_ok=True)
    extra = ["--api-server-count", "2"] if shape == "api2" else []

    def server(i: int):
        return t2l_serve(work, cpu_server_options(work / f"{shape}{i}", K, extra=extra), log_name=f"{shape}{i}.log", die_with_parent=True)

    with contextlib.ExitStack() as stack:
        servers = stack.enter_context(replica_set(2 if shape == "replicas" else 1, server))
        urls = [s.url for s in servers]
        pids = [s.process.pid for s in servers]
        url = urls[0]
        if shape == "replicas":
            router = stack.enter_context(vllm_router(urls, work / "router.log"))
            url, pids = router.url, [*pids, router.process.pid]
        yield url, urls, [*pids, *service_pids(work)]


def service_pids(work: Path) -> list[int]:
    """Adapter services are detached from the servers; their folders carry their pids."""
    return [int(p.name.split("-")[2]) for p in work.glob("*/t2l_vllm-adapters-*")]


def memory_by_role(pids: list[int]) -> dict[str, float]:
    mib: dict[str, float] = {}
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            root = psutil.Process(pid)
            for process in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.NoSuchProcess):
                    mib[role(process)] = mib.get(role(process), 0.0) + process.memory_info().rss / 2**20
    return {k: round(v, 1) for k, v in sorted(mib.items())}


def role(process: psutil.Process) -> str:
    line = " ".join(process.cmdline())
    name = process.name()
    if "t2l_vllm.service" in line:
        return "adapter service"
    if "vllm-router" in line:
        return "router"
    for part, label in (("EngineCore", "engine core"), ("Worker", "worker"), ("APIServer", "API server"), ("ApiServer", "API server")):
        if part in name or part in line:
            return label
    return "API server / launcher" if "t2l_vllm serve" in line else f"other ({name})"


async def timed(url: str, payloads: list[dict[str, Any]], concurrency: int, headers: list[dict[str, str]] | None = None) -> dict[str, float]:
    results, queue = [], iter(range(len(payloads)))
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        async def worker() -> None:
            for i in queue:
                results.append(await stream_one(client, payloads[i], headers[i] if headers else None))
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    return {"tokens_per_s": sum(r.completion_tokens for r in results) / wall,
            "ttft_p50_ms": 1e3 * statistics.median(r.ttft_s for r in results), "requests": len(results)}


def generations(urls: list[str]) -> float:
    return sum(scrape_metrics(u).get("t2l_generations_total", 0.0) for u in urls)


def run_shape(shape: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    started = time.perf_counter()
    with deployment(shape, work) as (url, servers, pids):
        ready_s = time.perf_counter() - started
        warm = [f"Scale-out task {j}: answer in one short sentence." for j in range(K)]
        for server in servers:  # untimed: every engine meets every batch size and the K adapters first
            warm_up = [body(PROMPTS[i % len(PROMPTS)], args.max_tokens, description=warm[i % K]) for i in range(2 * args.concurrency)]
            asyncio.run(timed(server, warm_up, args.concurrency))
        payloads = lambda make: [make(i) for i in range(args.requests)]  # noqa: E731
        out: dict[str, Any] = {"ready_s": round(ready_s, 1)}
        out["warm"] = asyncio.run(timed(url, payloads(lambda i: body(PROMPTS[i % len(PROMPTS)], args.max_tokens, description=warm[i % K])), args.concurrency))
        out["new"] = asyncio.run(timed(url, payloads(lambda i: body(PROMPTS[i % len(PROMPTS)], args.max_tokens, description=f"New {shape} task {i}: reply briefly.")), args.concurrency))
        for affinity in (True, False):  # the session key only matters behind the router
            fleet = [f"Fleet {shape} {affinity} task {j}: reply briefly." for j in range(FLEET_DESCRIPTIONS)]
            requests = [(d, PROMPTS[p]) for p in range(FLEET_PROMPTS) for d in fleet]
            before = generations(servers)
            headers = [affinity_headers(d) if affinity else {} for d, _ in requests]
            asyncio.run(timed(url, [body(p, 4, description=d) for d, p in requests], args.concurrency, headers))
            tag = "with" if affinity else "without"
            out[f"fleet_generations_per_description_{tag}_affinity"] = (generations(servers) - before) / FLEET_DESCRIPTIONS
        out["load_average"] = round(os.getloadavg()[0], 2)
        out["memory_mib"] = memory_by_role(pids)
        out["memory_total_mib"] = round(sum(out["memory_mib"].values()), 1)
    print(f"{shape}: {json.dumps(out)}", flush=True)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "scale_out.json")
    args = parser.parse_args(argv)
    if vllm_router_binary() is None:  # before the shapes that need none have run for minutes
        raise SystemExit(f"vllm-router is not installed: {ROUTER_INSTALL}")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="t2l-scale-out-") as tmp:
        shapes = {shape: run_shape(shape, args, Path(tmp) / shape) for shape in SHAPES}
    for shape in SHAPES:
        for arm in ("warm", "new"):
            shapes[shape][arm]["tokens_per_s_over_single"] = shapes[shape][arm]["tokens_per_s"] / shapes["single"][arm]["tokens_per_s"]
    print(f"\n{'shape':<9} {'warm tok/s':>10} {'x single':>8} {'new tok/s':>10} {'x single':>8} {'warm TTFT':>10} {'new TTFT':>9} "
          f"{'gen/desc':>9} {'memory MiB':>11}")
    for shape, s in shapes.items():
        gens = "/".join(f"{v:.2f}" for k, v in s.items() if k.startswith("fleet_generations"))
        print(f"{shape:<9} {s['warm']['tokens_per_s']:>10.1f} {s['warm']['tokens_per_s_over_single']:>8.2f} "
              f"{s['new']['tokens_per_s']:>10.1f} {s['new']['tokens_per_s_over_single']:>8.2f} {s['warm']['ttft_p50_ms']:>10.1f} "
              f"{s['new']['ttft_p50_ms']:>9.1f} {gens:>9} {s['memory_total_mib']:>11.1f}")
    print("gen/desc: adapters generated per description across the deployment, with / without the affinity session key")
    report = {"shapes": shapes, "config": {k: str(v) for k, v in vars(args).items()}, "cpu_cores": os.cpu_count(),
              "wall_s": round(time.perf_counter() - started, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wall time {report['wall_s']:.0f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
