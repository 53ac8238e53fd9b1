"""Routing time per query against the encoder's time alone, for libraries of 20 to 100,000 tasks.

Routing = encode the queries (MiniLM) + look them up in the task index (centroid
scoring, the default: an exact scan up to 8,192 tasks, a faiss inverted file
above). The encoding cost does not depend on the library; the lookup does. This
measures both in the same run, on the same queries, at batch 1 and 32, and checks
at the largest library:

- lookup <= 10% of encoding, at batch 1 and at batch 32;
- the index picks the same task as an exact scan of every centroid for >= 99% of
  queries (its scores are exact cosines whenever it does).

Queries are the 259 labelled ones in tests/data/routing_*.jsonl (on- and
off-topic); timing cycles through them in batches, agreement uses all of them.
Targets are judged on wall-clock medians. CPU time (all threads of the process) is
reported beside them, with the load average, because on a shared machine other
jobs stretch the encoder's wall time far more than the lookup's; `--threads 1`
makes CPU time the cost of the work alone (no threads spinning while they wait).

Libraries beyond the starter library are synthetic: the starter library's real
entry embeddings, each task copied with its vectors perturbed and re-normalised,
so scores and the shortlist stage behave as on real text. Encoding a 100,000-task
library from text would take hours on 2 cores, which is why the vectors are
synthesised rather than encoded. The copies of one starter task crowd together
(their centroids differ by ~0.001 in cosine), a hard case for an approximate index.

    .venv/bin/python benchmarks/router_latency.py [--sizes 20 1000 100000] [--repeats 20] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss
import torch

from t2l_vllm.router import RouterSettings, TaskIndex, TaskLibrary, router_encoder

DATA = Path(__file__).parent.parent / "tests" / "data"
LABELLED = (DATA / "routing_fit.jsonl", DATA / "routing_heldout.jsonl")
TARGET_LOOKUP_OVER_ENCODE = 0.10
TARGET_AGREEMENT = 0.99


def queries() -> list[str]:
    return [json.loads(line)["query"] for path in LABELLED for line in path.read_text().splitlines() if line.strip()]


def median_ms(fn: Callable[[int], Any], repeats: int) -> tuple[float, float]:
    """Median wall time and median process CPU time of fn(i) for i = 0..repeats-1, after one untimed call."""
    fn(repeats)
    wall, cpu = [], []
    for i in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn(i)
        wall.append((time.perf_counter() - start) * 1000)
        cpu.append((time.process_time() - start_cpu) * 1000)
    return statistics.median(wall), statistics.median(cpu)


def synthetic_index(base_entries: torch.Tensor, base_owners: torch.Tensor, n_base: int, n_tasks: int, settings: RouterSettings) -> TaskIndex:
    """The starter tasks, then copies of them with perturbed vectors up to `n_tasks` tasks."""
    if n_tasks <= n_base:
        keep = base_owners < n_tasks
        return TaskIndex(base_entries[keep], base_owners[keep], n_tasks, settings.top_k, settings.shortlist, settings.scoring)
    generator = torch.Generator().manual_seed(0)
    copies = -(-n_tasks // n_base)
    entries = base_entries.repeat(copies, 1)
    entries = torch.nn.functional.normalize(entries + 0.35 * torch.randn(entries.shape, generator=generator) / entries.shape[1] ** 0.5, dim=-1)
    entries[: len(base_entries)] = base_entries  # the real starter tasks stay as they are
    owners = torch.cat([base_owners + i * n_base for i in range(copies)])
    keep = owners < n_tasks
    return TaskIndex(entries[keep], owners[keep], n_tasks, settings.top_k, settings.shortlist, settings.scoring)


def agreement(index: TaskIndex, vectors: torch.Tensor) -> tuple[float, float]:
    """How often the index picks the exact scan's task, and how often it also reports the exact scores."""
    exact = (vectors @ index.centroids.T).topk(2, dim=-1)  # (Q, 2)
    best, first, second = index.scores(vectors)
    same_task = best == exact.indices[:, 0]
    same_scores = same_task & torch.isclose(first, exact.values[:, 0]) & torch.isclose(second, exact.values[:, 1])
    return float(same_task.float().mean()), float(same_scores.float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[20, 1000, 100_000])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, help="threads for torch and faiss (default: theirs, all cores)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "router_latency.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
        faiss.omp_set_num_threads(args.threads)
    load_before = os.getloadavg()[0]

    settings = RouterSettings()
    library = TaskLibrary.load("starter")
    encoder = router_encoder(settings.encoder)
    texts, owners = library.entries()
    base_entries, base_owners = encoder.encode(texts), torch.tensor(owners)
    pool = queries()
    vectors = encoder.encode(pool)

    def batch_of(batch: int, i: int) -> slice:
        start = (i * batch) % (len(pool) - batch + 1)
        return slice(start, start + batch)

    encode_ms = {b: median_ms(lambda i, b=b: encoder.encode(pool[batch_of(b, i)]), args.repeats) for b in args.batches}
    rows = []
    for size in args.sizes:
        index = synthetic_index(base_entries, base_owners, len(library.tasks), size, settings)
        same_task, same_scores = agreement(index, vectors)
        for batch in args.batches:
            lookup_ms, lookup_cpu_ms = median_ms(lambda i, index=index, batch=batch: index.scores(vectors[batch_of(batch, i)]), args.repeats)
            encode, encode_cpu = encode_ms[batch]
            rows.append({
                "tasks": size, "entries": index.pad, "batch": batch, "search": type(index.centroid_search).__name__,
                "encode_ms_per_query": encode / batch, "lookup_ms_per_query": lookup_ms / batch,
                "route_ms_per_query": (encode + lookup_ms) / batch, "lookup_over_encode": lookup_ms / encode,
                "encode_cpu_ms_per_query": encode_cpu / batch, "lookup_cpu_ms_per_query": lookup_cpu_ms / batch,
                "lookup_over_encode_cpu": lookup_cpu_ms / encode_cpu,
                "agrees_with_exact_scan": same_task, "exact_scores": same_scores,
            })
        del index

    load_after = os.getloadavg()[0]
    print(f"load average {load_before:.1f} before, {load_after:.1f} after; torch threads {torch.get_num_threads()}, "
          f"faiss threads {faiss.omp_get_max_threads()}")
    print(f"{'tasks':>8} {'entries':>9} {'batch':>5} {'search':>12} {'encode ms/q':>12} {'lookup ms/q':>12} {'route ms/q':>11} "
          f"{'lookup/encode':>14} {'(cpu)':>6} {'= exact':>8}")
    for r in rows:
        print(f"{r['tasks']:>8} {r['entries']:>9} {r['batch']:>5} {r['search']:>12} {r['encode_ms_per_query']:>12.3f} "
              f"{r['lookup_ms_per_query']:>12.3f} {r['route_ms_per_query']:>11.3f} {r['lookup_over_encode']:>13.1%} "
              f"{r['lookup_over_encode_cpu']:>6.1%} {r['agrees_with_exact_scan']:>8.1%}")
    largest = [r for r in rows if r["tasks"] == max(args.sizes)]
    targets: dict[str, dict[str, Any]] = {}
    for r in largest:
        value = r["lookup_over_encode"]
        targets[f"lookup_over_encode_batch{r['batch']}"] = {"value": value, "target": TARGET_LOOKUP_OVER_ENCODE, "met": value <= TARGET_LOOKUP_OVER_ENCODE}
    value = largest[0]["agrees_with_exact_scan"]
    targets["agrees_with_exact_scan"] = {"value": value, "target": TARGET_AGREEMENT, "met": value >= TARGET_AGREEMENT}
    for name, t in targets.items():
        bound = "<=" if name.startswith("lookup") else ">="
        print(f"target {name} at {largest[0]['tasks']} tasks: {t['value']:.3f} {bound} {t['target']}: {'met' if t['met'] else 'MISSED'}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {"torch": torch.__version__, "faiss": faiss.__version__, "torch_threads": torch.get_num_threads(),
              "faiss_threads": faiss.omp_get_max_threads(), "load_average": [load_before, load_after],
              "queries": len(pool), "tasks": max(args.sizes),
              "targets": targets, "rows": rows}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
