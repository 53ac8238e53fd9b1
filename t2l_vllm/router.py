"""Automatic per-query adaptation: pick a task description for a query that has none.

The decision is split the way semantic routers split it:

- `TaskLibrary` (data): tasks, each with descriptions and example queries, read
  from YAML, plus the calibrated `threshold` and the `fallback` policy;
- the encoder (text -> unit vectors): the task encoder, set up for cosines;
- `TaskIndex` (vectors): every description and example embedded once. A query is
  scored against each task by cosine to the task's centroid (the normalised mean
  of its entries; the default, one matrix product however many entries a task
  has; above 8,192 tasks through inverted lists over the centroids), or by the
  mean of the task's top-k most similar entries ("topk"; large
  libraries are then searched in two stages: centroids pick a shortlist whose
  entries are scored exactly). On the shipped labelled sets, centroid scoring
  routed more queries right than top-k (see README);
- `EmbeddingRouter` (the choice): the best task if its score reaches the
  threshold, and then that task's FIRST description, so every query of one task
  shares one cached adapter; otherwise the fallback: `query` (the query itself,
  cut to the description limit, becomes the description) or `base` (no adapter).

Calibration (`fit_threshold`) picks the threshold that maximises accuracy on
labelled queries, where a query labelled `null` is right only if it falls back.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch

from .descriptions import DEFAULT_MAX_DESCRIPTION_CHARS
from .encoder import DEFAULT_ENCODER, TaskEncoder, encoder_settings_for
from .errors import ConfigError, T2LError
from .jsonl import read_jsonl

Fallback = Literal["query", "base"]
FALLBACKS = ("query", "base")
SCORINGS = ("centroid", "topk")
STARTER_LIBRARY = Path(__file__).parent / "assets" / "task_library.yaml"
DEFAULT_THRESHOLD = 0.5


class RouterConfigError(T2LError):
    """A task library or labelled file that cannot be used, with where and why."""


@dataclass(frozen=True)
class Task:
    name: str
    descriptions: tuple[str, ...]
    examples: tuple[str, ...]


@dataclass(frozen=True)
class TaskLibrary:
    """The tasks a router can choose from, and how it decides."""

    tasks: tuple[Task, ...]
    threshold: float | None = None
    fallback: Fallback = "query"
    path: str = ""

    @classmethod
    def load(cls, path: str | Path) -> "TaskLibrary":
        """Reads and checks a library file; `starter` names the one shipped with t2l_vllm."""
        import yaml

        path = STARTER_LIBRARY if str(path) == "starter" else Path(path)
        try:
            doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as err:
            raise RouterConfigError(f"task library `{path}`: cannot read it: {err}") from err
        except yaml.YAMLError as err:
            raise RouterConfigError(f"task library `{path}`: not valid YAML: {err}") from err
        return cls.from_dict(doc, str(path))

    @classmethod
    def from_dict(cls, doc: Any, path: str = "<library>") -> "TaskLibrary":
        def fail(problem: str) -> RouterConfigError:
            return RouterConfigError(f"task library `{path}`: {problem}")

        if not isinstance(doc, dict):
            raise fail("the top level must be a mapping with a `tasks` list.")
        unknown = set(doc) - {"threshold", "fallback", "tasks"}
        if unknown:
            raise fail(f"unknown top-level field(s) {sorted(unknown)}; expected threshold, fallback, tasks.")
        threshold = doc.get("threshold")
        if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold)):
            raise fail(f"`threshold` must be a number, got {threshold!r}.")
        fallback = doc.get("fallback", "query")
        if fallback not in FALLBACKS:
            raise fail(f"`fallback` must be one of {FALLBACKS}, got {fallback!r}.")
        raw_tasks = doc.get("tasks")
        if not isinstance(raw_tasks, list) or not raw_tasks:
            raise fail("`tasks` must be a non-empty list.")
        tasks, seen = [], set()
        for i, raw in enumerate(raw_tasks):
            where = f"task #{i + 1}"
            if not isinstance(raw, dict):
                raise fail(f"{where} must be a mapping with name, descriptions and examples.")
            name = raw.get("name")
            if not isinstance(name, str) or not name.strip():
                raise fail(f"{where} has no `name` (a non-empty string).")
            where = f"task `{name}`"
            if name in seen:
                raise fail(f"{where} appears twice; task names must be unique.")
            seen.add(name)
            extra = set(raw) - {"name", "descriptions", "examples"}
            if extra:
                raise fail(f"{where} has unknown field(s) {sorted(extra)}.")
            lists = {}
            for key in ("descriptions", "examples"):
                values = raw.get(key)
                if not isinstance(values, list) or not values:
                    raise fail(f"{where} needs `{key}`: a non-empty list of strings.")
                for j, value in enumerate(values):
                    if not isinstance(value, str):
                        raise fail(f"{where}: {key}[{j}] must be a string, got {type(value).__name__}.")
                    if not value.strip():
                        raise fail(f"{where}: {key}[{j}] is empty.")
                lists[key] = tuple(v.strip() for v in values)
            tasks.append(Task(name, lists["descriptions"], lists["examples"]))
        return cls(tuple(tasks), None if threshold is None else float(threshold), fallback, path)

    def task(self, name: str) -> Task:
        for task in self.tasks:
            if task.name == name:
                return task
        raise RouterConfigError(f"task library `{self.path}` has no task `{name}`.")

    def write_threshold(self, threshold: float, out: str | Path | None = None) -> Path:
        """Writes the library with `threshold` set, keeping the rest of the file as it is."""
        source = Path(self.path)
        text = source.read_text(encoding="utf-8")
        line = f"threshold: {threshold:.4f}"
        pattern = re.compile(r"^threshold:.*$", re.MULTILINE)
        text = pattern.sub(line, text, count=1) if pattern.search(text) else f"{line}\n{text}"
        target = Path(out) if out else source
        target.write_text(text, encoding="utf-8")
        return target


@dataclass(frozen=True)
class RouteDecision:
    """What the router chose for one query."""

    task: str | None  # None: fell back
    description: str | None  # None: serve with the base model
    score: float
    fallback: Fallback | None = None

    @property
    def label(self) -> str:
        """The chosen task, or `fallback:query` / `fallback:base`."""
        return self.task if self.task is not None else f"fallback:{self.fallback}"


@dataclass(frozen=True)
class RouterSettings:
    """How the router is built; `None` overrides keep the library's own values."""

    library: str = "starter"
    threshold: float | None = None
    fallback: Fallback | None = None
    encoder: str = DEFAULT_ENCODER
    scoring: Literal["centroid", "topk"] = "centroid"
    top_k: int = 3
    shortlist: int = 64
    max_description_chars: int = DEFAULT_MAX_DESCRIPTION_CHARS

    def __post_init__(self) -> None:
        if self.fallback is not None and self.fallback not in FALLBACKS:
            raise ConfigError(f"`router fallback` must be one of {FALLBACKS}, got {self.fallback!r}.")
        if self.scoring not in SCORINGS:
            raise ConfigError(f"`router scoring` must be one of {SCORINGS}, got {self.scoring!r}.")
        if self.top_k <= 0 or self.shortlist <= 0:
            raise ConfigError("`top_k` and `shortlist` must be positive.")


def router_encoder(model: str = DEFAULT_ENCODER) -> TaskEncoder:
    """The task encoder configured for routing: raw text in, unit vectors out (cosines)."""
    return TaskEncoder(replace(encoder_settings_for(model), add_full_stop=False, scale="unit"))


EXACT_SCAN_TASKS = 8192  # above this many tasks, centroid scoring searches inverted lists


class CentroidClusters:
    """Inverted lists over task centroids, for libraries too large to scan per query.

    Spherical k-means groups the centroids into about sqrt(T) clusters; a query scans
    only the tasks of its `probes` nearest clusters. Scanning all 100,000 centroids
    reads 150 MB per query (memory-bound, ~15 ms on 2 cores); probing 16 of ~316
    clusters reads a few MB.
    """

    def __init__(self, centroids: torch.Tensor, probes: int = 16, iterations: int = 10, seed: int = 0) -> None:
        n_clusters = max(1, int(math.sqrt(len(centroids))))
        generator = torch.Generator().manual_seed(seed)
        means = centroids[torch.randperm(len(centroids), generator=generator)[:n_clusters]].clone()
        for _ in range(iterations):
            assign = self._nearest(centroids, means)
            sums = torch.zeros_like(means).index_add_(0, assign, centroids)
            empty = torch.bincount(assign, minlength=n_clusters) == 0
            means = torch.nn.functional.normalize(torch.where(empty[:, None], means, sums), dim=-1)
        assign = self._nearest(centroids, means)
        order = torch.argsort(assign, stable=True)
        self.task_ids = order  # position in `vectors` -> task index
        self.vectors = centroids[order].contiguous()  # (T, dim), grouped by cluster
        counts = torch.bincount(assign, minlength=n_clusters)
        self.bounds = torch.stack([torch.cumsum(counts, 0) - counts, torch.cumsum(counts, 0)], dim=-1).tolist()
        self.means = means
        self.probes = min(probes, n_clusters)

    @staticmethod
    def _nearest(vectors: torch.Tensor, means: torch.Tensor, chunk: int = 16384) -> torch.Tensor:
        return torch.cat([(part @ means.T).argmax(-1) for part in vectors.split(chunk)])

    def search(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(Q, dim) -> best task (Q,), its centroid cosine and the runner-up's, over probed clusters."""
        probed = (queries @ self.means.T).topk(self.probes, dim=-1).indices.tolist()  # (Q, P)
        best, first, second = [], [], []
        for query, clusters in zip(queries, probed):
            rows = torch.cat([torch.arange(*self.bounds[c]) for c in clusters])
            top = (self.vectors[rows] @ query).topk(min(2, len(rows)))
            best.append(int(self.task_ids[rows[top.indices[0]]]))
            first.append(top.values[0])
            second.append(top.values[-1])
        return torch.tensor(best), torch.stack(first), torch.stack(second)


class TaskIndex:
    """Entry vectors grouped by task; scores a query per task by centroid or top-k entries."""

    def __init__(self, entries: torch.Tensor, owners: torch.Tensor, n_tasks: int, top_k: int, shortlist: int, scoring: str = "centroid") -> None:
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
        self.clusters = CentroidClusters(self.centroids) if scoring == "centroid" and n_tasks > EXACT_SCAN_TASKS else None

    def scores(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(Q, dim) unit queries -> best task index (Q,), its score (Q,) and the runner-up's (Q,).

        With a single task the runner-up's score is the best's own.
        """
        if self.scoring == "centroid":
            if self.clusters is not None:
                return self.clusters.search(queries)
            return self._top2(torch.arange(self.n_tasks).expand(len(queries), -1), queries @ self.centroids.T)
        if self.n_tasks <= self.shortlist:
            candidates = torch.arange(self.n_tasks).expand(len(queries), -1)  # (Q, T)
        else:
            candidates = (queries @ self.centroids.T).topk(self.shortlist, dim=-1).indices  # (Q, S)
        slots = self.slots[candidates]  # (Q, C, width)
        sims = torch.einsum("qd,qcwd->qcw", queries, self.entries[slots])  # (Q, C, width)
        sims = sims.masked_fill(slots == self.pad, float("-inf"))
        k = min(self.top_k, sims.shape[-1])
        top = sims.topk(k, dim=-1).values  # (Q, C, k)
        counts = self.counts[candidates]  # (Q, C): tasks with fewer than k entries average fewer
        task_scores = torch.where(torch.isinf(top), torch.zeros_like(top), top).sum(-1) / counts.clamp(1, k)
        return self._top2(candidates, task_scores.masked_fill(counts == 0, float("-inf")))

    @staticmethod
    def _top2(candidates: torch.Tensor, task_scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        top = task_scores.topk(min(2, task_scores.shape[-1]), dim=-1)  # (Q, 2)
        best = candidates.gather(1, top.indices[:, :1]).squeeze(1)
        return best, top.values[:, 0], top.values[:, -1]


class EmbeddingRouter:
    """Chooses a task description for queries without one. Thread-safe for reads."""

    def __init__(self, library: TaskLibrary, settings: RouterSettings = RouterSettings(), encoder: TaskEncoder | None = None) -> None:
        self.library = library
        self.settings = settings
        self.threshold = settings.threshold if settings.threshold is not None else (library.threshold if library.threshold is not None else DEFAULT_THRESHOLD)
        self.fallback: Fallback = settings.fallback or library.fallback
        self.encoder = encoder or router_encoder(settings.encoder)
        texts, owners = [], []
        for i, task in enumerate(library.tasks):
            for text in (*task.descriptions, *task.examples):
                texts.append(text)
                owners.append(i)
        self.index = TaskIndex(
            self.encoder.encode(texts), torch.tensor(owners), len(library.tasks), settings.top_k, settings.shortlist, settings.scoring
        )

    @classmethod
    def from_settings(cls, settings: RouterSettings) -> "EmbeddingRouter":
        return cls(TaskLibrary.load(settings.library), settings)

    def best_tasks(self, queries: Sequence[str]) -> list[tuple[str, float]]:
        """The best task and the router's confidence in it for each query, before any threshold.

        Confidence = the best task's score plus its margin over the runner-up: a query
        close to one task and far from all others is routed more readily than one
        equally close to two tasks. On the shipped labelled sets this sent more
        off-topic queries to the fallback than the bare score did (see README).
        """
        if not queries:
            return []
        idx, best, second = self.index.scores(self.encoder.encode(queries))
        confidence = 2 * best - second
        return [(self.library.tasks[i].name, float(c)) for i, c in zip(idx.tolist(), confidence)]

    def route(self, queries: Sequence[str]) -> list[RouteDecision]:
        return [self.decide(query, name, score) for query, (name, score) in zip(queries, self.best_tasks(queries))]

    def decide(self, query: str, task: str, score: float) -> RouteDecision:
        if score >= self.threshold:
            return RouteDecision(task, self.library.task(task).descriptions[0], score)
        if self.fallback == "base":
            return RouteDecision(None, None, score, "base")
        text = " ".join(query.split())[: self.settings.max_description_chars]
        return RouteDecision(None, text or None, score, "query")


def query_of_request(body: dict[str, Any]) -> str | None:
    """The text a request is about: the last user message of a chat, or a completion prompt."""
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                content = message.get("content")
                if isinstance(content, str):
                    return content
                if isinstance(content, list):  # OpenAI content parts
                    parts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
                    parts = [p for p in parts if isinstance(p, str)]
                    return "\n".join(p for p in parts if p) or None
        return None
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    return prompt if isinstance(prompt, str) else None


# --- calibration and evaluation ---------------------------------------------------------------


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

