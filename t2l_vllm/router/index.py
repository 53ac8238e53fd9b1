"""Vectors: every entry of a task library embedded once, and a query's score for each task.

Two ways to score a task (`Scoring`):

- "centroid" (the default): the cosine between the query and the task's centroid,
  the normalised mean of its entries; one matrix product however many entries a
  task has. On the shipped labelled sets it routed more queries right than topk.
- "topk": the mean of the task's `top_k` most similar entries. Above `shortlist`
  tasks, the nearest centroids first pick a shortlist whose entries are scored exactly.

Both look centroids up through a `CentroidSearch`: an exact scan up to
`EXACT_SCAN_TASKS` tasks, above it an inverted-file index from faiss. Either way
the cosines returned are exact; the inverted file can only change which task wins,
when it misses the true best (at 100,000 tasks: docs/benchmarks.md).
"""

from __future__ import annotations

import math
from typing import Literal, Protocol

import numpy as np
import torch

Scoring = Literal["centroid", "topk"]
SCORINGS = ("centroid", "topk")

# Scanning all 100,000 centroids (384-d) reads 150 MB per query: ~15 ms on 2 cores,
# more than the encoder. Up to this many tasks the scan is cheap enough to stay exact.
EXACT_SCAN_TASKS = 8192
# Inverted lists: sqrt(tasks) of them (316 at 100,000 tasks, each with enough
# members for faiss's k-means), and how many of them a query scans: a fraction, but
# never fewer than MIN_PROBES (24 of 316 lists, ~7,500 centroids, at 100,000 tasks).
# On benchmarks/router_latency.py's libraries these agree with the exact scan on
# >= 99% of queries from 8,192 to 100,000 tasks, for each of 5 k-means seeds (16
# lists of 316 missed 2 to 5 of its 259 queries). Its synthetic tasks crowd in groups
# of hundreds to thousands whose centroids differ by ~0.001 in cosine, so a query
# must scan most of its group to be sure of the exact best.
PROBED_FRACTION = 0.075
MIN_PROBES = 16
# Lists hold float16 codes: at 100,000 tasks they scanned 1.4x faster than float32
# and 1.15x faster than 8-bit codes, whose decoding costs more than the memory it
# saves (CPU time of one thread). The best RESCORED x k candidates by code have
# their cosines recomputed exactly.
RESCORED = 4


class CentroidSearch(Protocol):
    """Finds the centroids nearest to each query; the one thing that changes with library size."""

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(Q, dim) unit queries -> exact cosines (Q, k') in descending order and task ids (Q, k'),
        k' = min(k, tasks); an id of -1 (cosine -inf) where fewer than k' were found."""
        ...


class ExactScan:
    """Every centroid scored: one matrix product."""

    def __init__(self, centroids: torch.Tensor) -> None:
        self.centroids = centroids  # (T, dim)

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        top = (queries @ self.centroids.T).topk(min(k, len(self.centroids)), dim=-1)  # (Q, k')
        return top.values, top.indices


class InvertedFile:
    """faiss IVF over the centroids: a query scans only the lists nearest to it.

    faiss rather than our own inverted lists: it scans compact codes with SIMD in C++
    for a whole batch of queries at once, where our Python loop per query did not
    amortise (lookup 53% of encoding at batch 32 and 100,000 tasks). Candidates are
    re-scored in numpy, not torch: torch's threads, parallelising ops this small on
    a busy machine, wait on each other for a scheduler slice (12 ms instead of 0.6
    at batch 1 with 2 threads under load).
    """

    def __init__(self, centroids: torch.Tensor, probed_fraction: float = PROBED_FRACTION, min_probes: int = MIN_PROBES) -> None:
        import faiss  # here: processes with smaller libraries never load it and its OpenMP runtime

        tasks, dim = centroids.shape
        lists = max(1, round(math.sqrt(tasks)))
        self.vectors = centroids.contiguous().numpy()  # (T, dim), shares memory with the index's centroids
        self.index = faiss.index_factory(dim, f"IVF{lists},SQfp16", faiss.METRIC_INNER_PRODUCT)
        self.index.train(self.vectors)
        self.index.add(self.vectors)
        self.index.nprobe = min(lists, max(min_probes, round(probed_fraction * lists)))

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        k = min(k, len(self.vectors))
        queries = queries.contiguous().numpy()
        _, ids = self.index.search(queries, min(RESCORED * k, len(self.vectors)))  # (Q, C), -1 past the last found
        cosines = np.einsum("qd,qcd->qc", queries, self.vectors[np.maximum(ids, 0)])  # (Q, C), exact
        cosines[ids < 0] = -np.inf
        best = np.argsort(-cosines, axis=1, kind="stable")[:, :k]  # (Q, k)
        return torch.from_numpy(np.take_along_axis(cosines, best, 1)), torch.from_numpy(np.take_along_axis(ids, best, 1))


def centroid_search(centroids: torch.Tensor) -> CentroidSearch:
    """The exact scan for libraries it can afford, the inverted file above them."""
    return ExactScan(centroids) if len(centroids) <= EXACT_SCAN_TASKS else InvertedFile(centroids)


class TaskIndex:
    """Entry vectors grouped by task; scores a query per task by centroid or top-k entries."""

    def __init__(self, entries: torch.Tensor, owners: torch.Tensor, n_tasks: int, top_k: int, shortlist: int, scoring: Scoring = "centroid") -> None:
        self.top_k, self.shortlist, self.n_tasks, self.scoring = top_k, shortlist, n_tasks, scoring
        order = torch.argsort(owners, stable=True)
        entries = entries[order]
        # (E + 1, dim), grouped by task; the last row is padding for tasks with fewer entries.
        self.entries = torch.cat([entries, torch.zeros(1, entries.shape[1])]).contiguous()
        self.pad = len(entries)
        owners = owners[order]
        counts = torch.bincount(owners, minlength=n_tasks)
        starts = torch.cumsum(counts, 0) - counts
        width = int(counts.max())
        offsets = torch.arange(width)[None, :]
        # (T, width) entry indices per task, padded with E (a column of -inf scores).
        self.slots = torch.where(offsets < counts[:, None], starts[:, None] + offsets, torch.tensor(self.pad))
        self.counts = counts
        sums = torch.zeros(n_tasks, entries.shape[1]).index_add_(0, owners, entries)
        self.centroids = torch.nn.functional.normalize(sums, dim=-1)  # (T, dim)
        self.centroid_search = centroid_search(self.centroids)

    def scores(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(Q, dim) unit queries -> best task index (Q,), its score (Q,) and the runner-up's (Q,).

        With a single task the runner-up's score is the best's own.
        """
        if self.scoring == "centroid":
            cosines, ids = self.centroid_search.search(queries, 2)  # (Q, 2)
            return self._top2(ids, cosines)
        if self.n_tasks <= self.shortlist:
            candidates = torch.arange(self.n_tasks).expand(len(queries), -1)  # (Q, T)
        else:
            candidates = self.centroid_search.search(queries, self.shortlist)[1]  # (Q, S)
        found = candidates >= 0
        candidates = candidates.clamp(min=0)
        slots = self.slots[candidates]  # (Q, C, width)
        sims = torch.einsum("qd,qcwd->qcw", queries, self.entries[slots])  # (Q, C, width)
        sims = sims.masked_fill(slots == self.pad, float("-inf"))
        k = min(self.top_k, sims.shape[-1])
        top = sims.topk(k, dim=-1).values  # (Q, C, k)
        counts = self.counts[candidates].masked_fill(~found, 0)  # (Q, C): tasks with fewer than k entries average fewer
        task_scores = torch.where(torch.isinf(top), torch.zeros_like(top), top).sum(-1) / counts.clamp(1, k)
        return self._top2(candidates, task_scores.masked_fill(counts == 0, float("-inf")))

    @staticmethod
    def _top2(candidates: torch.Tensor, task_scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Best candidate, its score and the runner-up's; the best's own where there is no runner-up."""
        top = task_scores.topk(min(2, task_scores.shape[-1]), dim=-1)  # (Q, 2)
        best = candidates.gather(1, top.indices[:, :1]).squeeze(1)
        second = top.values[:, -1]
        return best, top.values[:, 0], torch.where(torch.isinf(second), top.values[:, 0], second)
