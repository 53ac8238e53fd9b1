"""How serving cost grows with the number of distinct descriptions in play.

Requests draw their description from N distinct ones with Zipf(s=1) popularity
(the k-th most popular is asked 1/k as often as the first), for N in 1, 16, 256
and 4,096, against two servers that differ only in the adapter cache: one
smaller than most of these working sets (`--small-cache` entries) and one larger
than all of them. Each (cache, N) cell sends an untimed round and then a timed
round of the same size (steady state: the cache holds what the first round left),
and reports output tokens/s, TTFT p50/p99, the hit rate and the adapters generated.

The hit rate is set beside two references: `lru`, an LRU cache of the same size
simulated over the very same draws (what the server's cache should reach, as
concurrent requests for one description count once), and `zipf`, H(C)/H(N), the
share of requests on the C most popular descriptions in the long run (H: harmonic
numbers, H(n) ~ ln n + 0.58), which a finite run approaches from below.

    python benchmarks/working_set.py [--requests 192 --concurrency 8 --max-tokens 16 --small-cache 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import tempfile
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from t2l_vllm.testing.servers import scrape_metrics, t2l_serve
from t2l_vllm.testing.serving_bench import PROMPTS, body, cpu_server_options, stream_one

WORKING_SETS = (1, 16, 256, 4096)
LARGE_CACHE = 8192


def harmonic(n: int) -> float:
    return float(np.sum(1.0 / np.arange(1, n + 1)))


def simulated_lru_hit_rate(warm: list[int], timed: list[int], capacity: int) -> float:
    """Hits of an LRU cache of `capacity` over the timed draws, after the warm ones."""
    cache: OrderedDict[int, None] = OrderedDict()
    hits = 0
    for i, d in enumerate([*warm, *timed]):
        if d in cache:
            cache.move_to_end(d)
            hits += i >= len(warm)
        else:
            cache[d] = None
            if len(cache) > capacity:
                cache.popitem(last=False)
    return hits / len(timed)


def zipf_draws(n: int, count: int, rng: random.Random) -> list[int]:
    weights = [1.0 / (k + 1) for k in range(n)]
    return rng.choices(range(n), weights=weights, k=count)


async def timed_round(url: str, payloads: list[dict[str, Any]], concurrency: int) -> dict[str, float]:
    results, queue = [], iter(payloads)
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        async def worker() -> None:
            for payload in queue:
                results.append(await stream_one(client, payload))
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    ttfts = [1e3 * r.ttft_s for r in results]
    return {"tokens_per_s": sum(r.completion_tokens for r in results) / wall, "requests_per_s": len(results) / wall,
            "ttft_p50_ms": float(np.percentile(ttfts, 50)), "ttft_p99_ms": float(np.percentile(ttfts, 99))}


def run_cell(url: str, cache: int, n: int, args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(n)
    descriptions = [f"Working set {n}, cache {cache}, task {j}: answer briefly and politely." for j in range(n)]

    warm, timed = zipf_draws(n, args.requests, rng), zipf_draws(n, args.requests, rng)

    def payloads(draws: list[int]) -> list[dict[str, Any]]:
        return [body(PROMPTS[i % len(PROMPTS)], args.max_tokens, description=descriptions[d]) for i, d in enumerate(draws)]

    asyncio.run(timed_round(url, payloads(warm), args.concurrency))  # untimed: fills the cache
    before = scrape_metrics(url)
    measured = asyncio.run(timed_round(url, payloads(timed), args.concurrency))
    after = scrape_metrics(url)
    lookups = {k: after.get(f't2l_cache_lookups_total{{result="{k}"}}', 0) - before.get(f't2l_cache_lookups_total{{result="{k}"}}', 0)
               for k in ("hit", "miss", "coalesced")}
    total = sum(lookups.values()) or 1
    cell = {"cache": cache, "working_set": n, **measured, "hit_rate": (lookups["hit"] + lookups["coalesced"]) / total,
            "lru_hit_rate": simulated_lru_hit_rate(warm, timed, cache),
            "zipf_hit_rate": min(1.0, harmonic(min(cache, n)) / harmonic(n)),
            "generated": after.get("t2l_generations_total", 0) - before.get("t2l_generations_total", 0),
            "load_average": os.getloadavg()[0]}
    print(f"cache {cache:5d}  N {n:5d}: {cell['tokens_per_s']:7.1f} tok/s  TTFT p50 {cell['ttft_p50_ms']:7.1f} ms  "
          f"p99 {cell['ttft_p99_ms']:7.1f} ms  hit rate {cell['hit_rate']:.2f} (LRU {cell['lru_hit_rate']:.2f}, "
          f"Zipf {cell['zipf_hit_rate']:.2f})  "
          f"generated {cell['generated']:.0f}", flush=True)
    return cell


def write_plot(cells: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for colour, cache in zip(("tab:blue", "tab:orange"), sorted({c["cache"] for c in cells})):
        mine = [c for c in cells if c["cache"] == cache]
        xs = [c["working_set"] for c in mine]
        label = f"cache {cache}"
        axes[0].plot(xs, [c["tokens_per_s"] for c in mine], marker="o", color=colour, label=label)
        axes[1].plot(xs, [c["ttft_p50_ms"] for c in mine], marker="o", color=colour, label=f"{label} p50")
        axes[1].plot(xs, [c["ttft_p99_ms"] for c in mine], marker="x", linestyle="--", color=colour, label=f"{label} p99")
        axes[2].plot(xs, [c["hit_rate"] for c in mine], marker="o", color=colour, label=f"{label} measured")
        axes[2].plot(xs, [c["lru_hit_rate"] for c in mine], linestyle=":", color=colour, label=f"{label} simulated LRU")
    for ax, title in zip(axes, ("output tokens/s", "TTFT ms", "cache hit rate")):
        ax.set_xscale("log")
        ax.set_xlabel("distinct descriptions (Zipf s=1)")
        ax.set_title(title)
        ax.legend(fontsize=7)
    axes[1].set_yscale("log")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=192, help="requests per round (default: %(default)s)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--small-cache", type=int, default=16, help="entries of the smaller adapter cache (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "working_set.json")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    cells = []
    with tempfile.TemporaryDirectory(prefix="t2l-working-set-") as tmp:
        for cache in (args.small_cache, LARGE_CACHE):
            work = Path(tmp) / f"cache{cache}"
            work.mkdir()
            options = cpu_server_options(work, extra=["--adapter-cache-entries", str(cache)])
            with t2l_serve(work, options, die_with_parent=True) as server:
                cells += [run_cell(server.url, cache, n, args) for n in WORKING_SETS]
    report = {"cells": cells, "config": {k: str(v) for k, v in vars(args).items()}, "wall_s": round(time.perf_counter() - started, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    write_plot(cells, args.out.with_suffix(".png"))
    print(f"\n{'cache':>6} {'N':>6} {'tok/s':>8} {'TTFT p50':>9} {'TTFT p99':>9} {'hit rate':>9} {'LRU':>6} {'Zipf':>6} {'generated':>9}")
    for c in cells:
        print(f"{c['cache']:>6} {c['working_set']:>6} {c['tokens_per_s']:>8.1f} {c['ttft_p50_ms']:>9.1f} {c['ttft_p99_ms']:>9.1f} "
              f"{c['hit_rate']:>9.2f} {c['lru_hit_rate']:>6.2f} {c['zipf_hit_rate']:>6.2f} {c['generated']:>9.0f}")
    print(f"wall time {report['wall_s']:.0f} s; wrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
