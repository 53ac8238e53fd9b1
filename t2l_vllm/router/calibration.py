"""Calibration and evaluation of a router on labelled queries.

Labelled queries are JSONL, one `{"query": ..., "task": name-or-null}` a line; a
query labelled `null` must fall back. `fit_threshold` picks the threshold that
maximises accuracy on them; `evaluate` reports accuracy, coverage and per-task
recall and precision at the router's own threshold.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..jsonl import read_jsonl
from .library import RouterConfigError, TaskLibrary
from .router import EmbeddingRouter


@dataclass(frozen=True)
class Labelled:
    query: str
    task: str | None


def load_labelled(path: str | Path, library: TaskLibrary) -> list[Labelled]:
    """Reads JSONL `{"query": ..., "task": name-or-null}` lines; errors name `path:line`."""
    names = {t.name for t in library.tasks}
    items = []
    for where, record in read_jsonl(path, RouterConfigError):
        if not isinstance(record, dict) or not isinstance(record.get("query"), str) or "task" not in record:
            raise RouterConfigError(f"{where}: expected {{\"query\": string, \"task\": name or null}}.")
        task = record["task"]
        if task is not None and task not in names:
            raise RouterConfigError(f"{where}: task `{task}` is not in the library.")
        items.append(Labelled(record["query"], task))
    return items


def _correct(predicted: str, score: float, threshold: float, label: str | None) -> bool:
    return (predicted == label) if score >= threshold else (label is None)


def fit_threshold(best: Sequence[tuple[str, float]], labels: Sequence[str | None]) -> tuple[float, float]:
    """The threshold maximising accuracy, and that accuracy.

    Candidates lie midway between consecutive observed scores (plus both ends); among
    equally accurate candidates the middle one of the widest best run is taken, for margin.
    """
    scores = sorted({s for _, s in best})
    candidates = [scores[0] - 1e-6] + [(a + b) / 2 for a, b in zip(scores, scores[1:])] + [scores[-1] + 1e-6]
    accuracy = [sum(_correct(p, s, t, y) for (p, s), y in zip(best, labels)) / len(labels) for t in candidates]
    top = max(accuracy)
    winners = [t for t, a in zip(candidates, accuracy) if a == top]
    return winners[len(winners) // 2], top


@dataclass
class EvalReport:
    n: int
    accuracy: float
    coverage: float  # fraction of queries routed to a task
    off_topic_fallback_rate: float | None
    per_task: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"n": self.n, "accuracy": round(self.accuracy, 4), "coverage": round(self.coverage, 4),
                           "off_topic_fallback_rate": None if self.off_topic_fallback_rate is None else round(self.off_topic_fallback_rate, 4)})


def evaluate(router: EmbeddingRouter, items: Sequence[Labelled]) -> EvalReport:
    best = router.best_tasks([i.query for i in items])
    routed = [s >= router.threshold for _, s in best]
    correct = [_correct(p, s, router.threshold, i.task) for (p, s), i in zip(best, items)]
    off = [c for c, i in zip(correct, items) if i.task is None]
    per_task: dict[str, dict[str, float]] = {}
    for task in [t.name for t in router.library.tasks] + [None]:
        name = task or "(off-topic)"
        mine = [k for k, i in enumerate(items) if i.task == task]
        predicted = [k for k, ((p, _), r) in enumerate(zip(best, routed)) if (r and p == task) or (task is None and not r)]
        if not mine and not predicted:
            continue
        hits = len(set(mine) & set(predicted))
        per_task[name] = {"n": len(mine), "recall": hits / len(mine) if mine else float("nan"),
                          "precision": hits / len(predicted) if predicted else float("nan")}
    return EvalReport(
        n=len(items),
        accuracy=sum(correct) / len(items),
        coverage=sum(routed) / len(items),
        off_topic_fallback_rate=(sum(off) / len(off)) if off else None,
        per_task=per_task,
    )
