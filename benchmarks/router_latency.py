"""Routing time per query against the encoder's time alone, for libraries of 20 to 100,000 tasks.

Routing = encode the queries (MiniLM) + look them up in the task index (centroid
scoring, the default; inverted lists above 8,192 tasks, so the last column says
how often that search picks the same task as a full scan). The
encoding cost does not depend on the library; the lookup does. This measures
both in the same run, for the same queries, at batch 1 and 32, and reports the
lookup's share of the encoding time (target: at most 10% at 100,000 tasks).

Libraries beyond the starter library are synthetic: the starter library's real
entry embeddings, each task copied with its vectors perturbed and re-normalised,
so scores and the shortlist stage behave as on real text. Encoding a 100,000-task
library from text would take hours on 2 cores, which is why the vectors are
synthesised rather than encoded.

    .venv/bin/python benchmarks/router_latency.py [--sizes 20 1000 100000] [--repeats 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from t2l_vllm.router import RouterSettings, TaskIndex, TaskLibrary, router_encoder

QUERIES = [
    "A farmer has 12 cows and buys 7 more. How many cows does he have now?",
    "Translate 'the weather is lovely today' into French.",
    "Is the following review positive or negative? 'Dull and far too long.'",
    "Write a Python function that returns the n-th Fibonacci number.",
    "Which of these is a mammal? (A) shark (B) dolphin (C) trout (D) eel",
    "Summarise this paragraph in one sentence: the city council met on Tuesday to discuss the budget.",
    "Who won the football match yesterday?",
    "Extract the names of people mentioned: Alice met Bob in Paris.",
]


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[20, 1000, 100_000])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", default="benchmarks/results/router_latency.json")
    args = parser.parse_args()

    settings = RouterSettings()
    library = TaskLibrary.load("starter")
    encoder = router_encoder(settings.encoder)
    texts, owners = [], []
    for i, task in enumerate(library.tasks):
        for text in (*task.descriptions, *task.examples):
            texts.append(text)
            owners.append(i)
    base_entries, base_owners = encoder.encode(texts), torch.tensor(owners)

    rows = []
    for batch in args.batches:
        queries = (QUERIES * (-(-batch // len(QUERIES))))[:batch]
        encode_ms = median_ms(lambda: encoder.encode(queries), args.repeats)
        vectors = encoder.encode(queries)
        for size in args.sizes:
            index = synthetic_index(base_entries, base_owners, len(library.tasks), size, settings)
            lookup_ms = median_ms(lambda: index.scores(vectors), args.repeats)
            exact = (vectors @ index.centroids.T).argmax(-1)
            agreement = float((index.scores(vectors)[0] == exact).float().mean())
            rows.append({
                "tasks": size, "entries": index.pad, "batch": batch,
                "encode_ms_per_query": encode_ms / batch, "lookup_ms_per_query": lookup_ms / batch,
                "route_ms_per_query": (encode_ms + lookup_ms) / batch, "lookup_over_encode": lookup_ms / encode_ms,
                "agrees_with_exact_scan": agreement,
            })
            del index

    print(f"{'tasks':>8} {'entries':>9} {'batch':>5} {'encode ms/q':>12} {'lookup ms/q':>12} {'route ms/q':>11} {'lookup/encode':>14} {'= exact':>8}")
    for r in rows:
        print(f"{r['tasks']:>8} {r['entries']:>9} {r['batch']:>5} {r['encode_ms_per_query']:>12.3f} {r['lookup_ms_per_query']:>12.3f} "
              f"{r['route_ms_per_query']:>11.3f} {r['lookup_over_encode']:>13.1%} {r['agrees_with_exact_scan']:>8.0%}")
    for r in rows:
        if r["tasks"] == max(args.sizes):
            verdict = "meets" if r["lookup_over_encode"] <= 0.10 else "misses"
            print(f"target (lookup <= 10% of encoding at {r['tasks']} tasks), batch {r['batch']}: {verdict} ({r['lookup_over_encode']:.1%})")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
