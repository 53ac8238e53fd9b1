"""Soak: 10,000 distinct descriptions, with Zipf-distributed repeats, through one server; does anything grow?

One `t2l-vllm serve` (the embedded default, or `--model/--hypernet`, and its default
cache of 256 adapters) takes a stream of short completions, each with a
`task_description`: every one of `--distinct` descriptions is introduced once, in
order, and `--repeats` more requests ask again for descriptions already seen,
the k-th introduced drawn with weight 1/k^s (Zipf, `--zipf`; early ones are the
popular ones), interleaved at random. While it runs, a sampler records every
`--interval` seconds:

    RSS, open file descriptors and threads of each server process: the API server,
        vLLM's engine core and worker(s), and the detached adapter service
    adapter folders and their bytes on disk (the service's store folder)
    t2l_adapters_resident, t2l_adapters_retired, t2l_adapter_pins (from /metrics)
    vLLM's LoRA slots in use (adapters running, from vllm:lora_requests_info)

It writes the samples and a verdict per series to JSON, a PNG over time, and prints
a table. A series "levels off" when a straight line fitted to its second half
(the cache is full long before then) grows by less than its tolerance over that
half: 5% of its peak, and at least an absolute floor per unit (16 MiB of RSS, 8
descriptors, 4 threads, 4 folders or adapters, 1 MiB on disk).

    python benchmarks/soak.py [--distinct 10000 --repeats 20000 --concurrency 8 --max-tokens 2 --out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

from t2l_vllm.testing.servers import t2l_serve
from t2l_vllm.testing.serving_bench import SERVED_NAME, cpu_server_options
ROLES = ("api_server", "engine_core", "worker", "adapter_service")
LORA_INFO = "vllm:lora_requests_info{"
# Absolute floors of the "levels off" tolerance, per unit of a series.
FLOORS = {"rss_mib": 16.0, "fds": 8.0, "threads": 4.0, "count": 4.0, "mib": 1.0}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--distinct", type=int, default=10_000, help="distinct descriptions (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=20_000, help="further requests repeating seen descriptions (default: %(default)s)")
    p.add_argument("--zipf", type=float, default=1.1, help="Zipf exponent of the repeats (default: %(default)s)")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight (default: %(default)s)")
    p.add_argument("--max-tokens", type=int, default=2, help="tokens per answer (default: %(default)s)")
    p.add_argument("--interval", type=float, default=5.0, help="seconds between samples (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "soak.json")
    p.add_argument("--model", help="base model (default: the embedded default's)")
    p.add_argument("--hypernet", help="hypernetwork folder (default: the embedded default)")
    return p.parse_args(argv)


def workload(distinct: int, repeats: int, zipf: float, seed: int) -> list[int]:
    """Description indices in request order: each of `distinct` introduced once, `repeats` repeats of
    already-introduced ones, the k-th introduced drawn with weight 1/k^zipf."""
    rng = np.random.default_rng(seed)
    is_new = np.zeros(distinct + repeats, dtype=bool)
    is_new[rng.choice(distinct + repeats, size=distinct, replace=False)] = True
    is_new[0] = True  # the first request cannot repeat anything
    cdf = np.cumsum(1.0 / np.arange(1, distinct + 1) ** zipf)
    order, seen = [], 0
    for new, u in zip(is_new, rng.random(distinct + repeats)):
        if new and seen < distinct:
            order.append(seen)
            seen += 1
        else:
            order.append(int(np.searchsorted(cdf, u * cdf[seen - 1])))
    return order


def description(i: int) -> str:
    return f"Soak task {i}: answer questions about subject number {i} in one short sentence."


def server_options(args: argparse.Namespace, adapter_dir: Path) -> list[str]:
    extra = [part for option in ("model", "hypernet") if getattr(args, option) for part in (f"--{option}", getattr(args, option))]
    return cpu_server_options(adapter_dir, 4, prefix_caching=True, extra=extra)


@dataclass
class Sampler:
    """Samples the server's processes, folders and metrics on a thread until stopped."""

    url: str
    server_pid: int
    adapter_dir: Path
    interval: float
    samples: list[dict[str, Any]] = field(default_factory=list)
    done: Counter = field(default_factory=Counter)  # requests finished, by status
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> threading.Thread:
        self._start = time.monotonic()
        thread = threading.Thread(target=self._run, name="soak-sampler", daemon=True)
        thread.start()
        return thread

    def stop(self, thread: threading.Thread) -> None:
        self._stop.set()
        thread.join()
        self.samples.append(self.sample())

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.samples.append(self.sample())

    def processes(self) -> dict[str, list[psutil.Process]]:
        root = psutil.Process(self.server_pid)
        children = root.children(recursive=True)
        store = next(self.adapter_dir.glob("t2l_vllm-adapters-*"))
        return {
            "api_server": [root],
            "engine_core": [p for p in children if "EngineCore" in p.name()],
            "worker": [p for p in children if "Worker" in p.name()],
            "adapter_service": [psutil.Process(int(store.name.split("-")[2]))],
        }

    def sample(self) -> dict[str, Any]:
        row: dict[str, Any] = {"t_s": round(time.monotonic() - self._start, 1), "requests": sum(self.done.values())}
        for role, processes in self.processes().items():
            row[f"{role}.rss_mib"] = round(sum(p.memory_info().rss for p in processes) / 2**20, 1)
            row[f"{role}.fds"] = sum(p.num_fds() for p in processes)
            row[f"{role}.threads"] = sum(p.num_threads() for p in processes)
        sizes = [size for folder in self.adapter_dir.glob("t2l_vllm-adapters-*/t2l-*") if (size := folder_bytes(folder)) is not None]
        row["adapter_folders.count"] = len(sizes)
        row["adapter_folders.mib"] = round(sum(sizes) / 2**20, 2)
        text = httpx.get(f"{self.url}/metrics", timeout=30).text
        for name in ("t2l_adapters_resident", "t2l_adapters_retired", "t2l_adapter_pins"):
            row[f"{name}.count"] = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + " "))
        row["lora_slots_running.count"] = lora_slots_running(text)
        return row


def folder_bytes(folder: Path) -> int | None:
    """Bytes of the files in `folder`; None when the service removed it while it was being measured."""
    try:
        with os.scandir(folder) as entries:
            return sum(entry.stat().st_size for entry in entries)
    except FileNotFoundError:
        return None


def lora_slots_running(metrics: str) -> int:
    """Adapters running in vLLM's LoRA slots, from the newest vllm:lora_requests_info series
    (its value is a timestamp; the plugin counts generated adapters as `t2l-generated:N`)."""
    newest, labels = -1.0, ""
    for line in metrics.splitlines():
        if line.startswith(LORA_INFO):
            head, value = line.rsplit(" ", 1)
            if float(value) > newest:
                newest, labels = float(value), head
    running = labels.split('running_lora_adapters="', 1)[1].split('"', 1)[0] if 'running_lora_adapters="' in labels else ""
    return sum(int(n.split(":", 1)[1]) if n.startswith("t2l-generated:") else 1 for n in running.split(",") if n)


async def drive(url: str, order: list[int], concurrency: int, max_tokens: int, done: Counter) -> float:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in order:
        queue.put_nowait(i)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:

        async def worker() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                body = {"model": SERVED_NAME, "prompt": "Q: what is it? A:", "max_tokens": max_tokens, "task_description": description(i)}
                try:
                    done[(await client.post("/v1/completions", json=body)).status_code] += 1
                except httpx.HTTPError as err:
                    done[type(err).__name__] += 1

        start = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.monotonic() - start


def verdicts(samples: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per series: first, peak and last values, growth over the second half (fitted line), whether it levels
    off, and the second half's slope per 10,000 requests: a creep well inside the tolerance still shows there."""
    out = {}
    half = samples[len(samples) // 2:]
    t = np.array([s["t_s"] for s in half])
    requests = np.array([s["requests"] for s in half], dtype=float)
    for key in samples[0]:
        if key in ("t_s", "requests"):
            continue
        values = np.array([s[key] for s in samples], dtype=float)
        tail = np.array([s[key] for s in half], dtype=float)
        slope = float(np.polyfit(t, tail, 1)[0]) if len(half) > 2 and np.ptp(t) > 0 else 0.0
        growth = slope * float(np.ptp(t)) if len(half) > 2 else 0.0
        per_10k = float(np.polyfit(requests, tail, 1)[0]) * 10_000 if len(half) > 2 and np.ptp(requests) > 0 else 0.0
        tolerance = max(0.05 * float(values.max()), FLOORS[key.rsplit(".", 1)[1]])
        out[key] = {"first": float(values[0]), "peak": float(values.max()), "last": float(values[-1]),
                    "second_half_growth": round(growth, 2), "tolerance": round(tolerance, 2), "levels_off": abs(growth) <= tolerance,
                    "per_10k_requests": round(per_10k, 2)}
    return out


def write_chart(samples: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s["t_s"] for s in samples]
    panels = [("RSS (MiB)", "rss_mib"), ("open file descriptors", "fds"), ("threads", "threads")]
    fig, axes = plt.subplots(2, 3, figsize=(16, 8.5), constrained_layout=True)
    for ax, (title, unit) in zip(axes[0], panels):
        for role in ROLES:
            ax.plot(t, [s[f"{role}.{unit}"] for s in samples], label=role.replace("_", " "))
        ax.set_title(title)
        ax.legend(fontsize=8)
    ax = axes[1][0]
    for key in ("adapter_folders.count", "t2l_adapters_resident.count", "t2l_adapters_retired.count", "t2l_adapter_pins.count"):
        ax.plot(t, [s[key] for s in samples], label=key.split(".")[0])
    ax.set_title("adapters")
    ax.legend(fontsize=8)
    axes[1][1].plot(t, [s["adapter_folders.mib"] for s in samples])
    axes[1][1].set_title("adapter folders on disk (MiB)")
    axes[1][2].plot(t, [s["lora_slots_running.count"] for s in samples], drawstyle="steps-post")
    axes[1][2].set_title("vLLM LoRA slots running (of --max-loras 4)")
    for ax in axes.flat:
        ax.set_xlabel("seconds")
    requests = samples[-1]["requests"]
    fig.suptitle(f"soak: {requests:,} requests over {t[-1]:.0f} s")
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    order = workload(args.distinct, args.repeats, args.zipf, args.seed)
    work = Path(tempfile.mkdtemp(prefix="t2l-soak-"))
    adapter_dir = Path(tempfile.mkdtemp(prefix="t2l-soak-adapters-", dir="/dev/shm" if os.access("/dev/shm", os.W_OK) else None))
    with t2l_serve(work, server_options(args, adapter_dir), die_with_parent=True) as server:
        url = server.url
        sampler = Sampler(url, server.process.pid, adapter_dir, args.interval)
        thread = sampler.start()
        elapsed = asyncio.run(drive(url, order, args.concurrency, args.max_tokens, sampler.done))
        sampler.stop(thread)
    judged = verdicts(sampler.samples)
    report = {
        "command": " ".join(["python", "benchmarks/soak.py", *(argv if argv is not None else sys.argv[1:])]),
        "workload": {"requests": len(order), "distinct": len(set(order)), "repeats": args.repeats, "zipf": args.zipf,
                     "top_1pct_share": round(sum(c for _, c in Counter(order).most_common(max(1, args.distinct // 100))) / len(order), 3),
                     "concurrency": args.concurrency, "max_tokens": args.max_tokens},
        "elapsed_s": round(elapsed, 1), "requests_per_s": round(len(order) / elapsed, 1),
        "statuses": {str(k): v for k, v in sampler.done.items()},
        "load_average_1m_at_end": os.getloadavg()[0],
        "verdicts": judged, "samples": sampler.samples,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    chart = args.out.with_suffix(".png")
    write_chart(sampler.samples, chart)
    print(f"{len(order):,} requests ({report['workload']['distinct']:,} distinct) in {elapsed:.0f} s, "
          f"{report['requests_per_s']} req/s, statuses {report['statuses']}")
    print(f"{'series':40} {'first':>9} {'peak':>9} {'last':>9} {'2nd-half growth':>16} {'tolerance':>10} {'per 10k req':>12}  levels off")
    for key, v in judged.items():
        print(f"{key:40} {v['first']:9.1f} {v['peak']:9.1f} {v['last']:9.1f} {v['second_half_growth']:16.2f} {v['tolerance']:10.2f} "
              f"{v['per_10k_requests']:12.2f}  {'yes' if v['levels_off'] else 'NO'}")
    print(f"wrote {args.out} and {chart}")


if __name__ == "__main__":
    main()
