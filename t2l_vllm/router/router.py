"""The choice: which task description a query without one gets, or which fallback.

The best task (by the index's score) wins if the router's confidence in it reaches
the threshold, and the query then gets that task's FIRST description, so every
query of one task shares one cached adapter. Otherwise the fallback applies:
`query` (the query itself, cut to the description limit, becomes the description)
or `base` (no adapter).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from ..descriptions import DEFAULT_MAX_DESCRIPTION_CHARS
from ..encoder import DEFAULT_ENCODER, TaskEncoder, encoder_settings_for
from ..errors import ConfigError
from .index import SCORINGS, Scoring, TaskIndex
from .library import FALLBACKS, Fallback, TaskLibrary

DEFAULT_THRESHOLD = 0.5


@dataclass(frozen=True)
class RouteDecision:
    """What the router chose for one query."""

    task: str | None  # None: fell back
    description: str | None  # None: serve with the base model
    score: float
    fallback: Fallback | None = None
    adapter: str | None = None  # the name of the task's trained adapter, which serves it instead of a generated one

    @property
    def label(self) -> str:
        """The chosen task, or `fallback:query` / `fallback:base`."""
        return self.task if self.task is not None else f"fallback:{self.fallback}"


@dataclass(frozen=True)
class RouterSettings:
    """How the router is built; `None` overrides keep the library's own values."""

    library: str = field(default="starter", metadata={"help": "task library YAML (`starter`: the one shipped with t2l_vllm)"})
    threshold: float | None = field(default=None, metadata={"help": "override the library's threshold"})
    fallback: Fallback | None = field(default=None, metadata={"help": "override the library's fallback", "choices": FALLBACKS})
    encoder: str = field(default=DEFAULT_ENCODER, metadata={"help": "sentence-transformers model that embeds queries and tasks"})
    scoring: Scoring = field(
        default="centroid", metadata={"help": "task score: cosine to the task centroid, or mean of the top-k entries", "choices": SCORINGS}
    )
    top_k: int = field(default=3, metadata={"help": "entries averaged per task with topk scoring"})
    shortlist: int = field(default=64, metadata={"help": "tasks the centroids shortlist for topk scoring of a large library"})

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


class EmbeddingRouter:
    """Chooses a task description for queries without one. Thread-safe for reads."""

    def __init__(
        self,
        library: TaskLibrary,
        settings: RouterSettings = RouterSettings(),
        encoder: TaskEncoder | None = None,
        max_description_chars: int = DEFAULT_MAX_DESCRIPTION_CHARS,
    ) -> None:
        """`max_description_chars`: the generator's limit (`GeneratorSettings`, its one home); a query
        used as its own description is cut to it, so that the generator accepts it."""
        self.library = library
        self.settings = settings
        self.max_description_chars = max_description_chars
        self.threshold = settings.threshold if settings.threshold is not None else (library.threshold if library.threshold is not None else DEFAULT_THRESHOLD)
        self.fallback: Fallback = settings.fallback or library.fallback
        self.encoder = encoder or router_encoder(settings.encoder)
        texts, owners = library.entries()
        self.index = TaskIndex(
            self.encoder.encode(texts), torch.tensor(owners), len(library.tasks), settings.top_k, settings.shortlist, settings.scoring
        )

    @classmethod
    def from_settings(cls, settings: RouterSettings, max_description_chars: int = DEFAULT_MAX_DESCRIPTION_CHARS) -> "EmbeddingRouter":
        return cls(TaskLibrary.load(settings.library), settings, max_description_chars=max_description_chars)

    def best_tasks(self, queries: Sequence[str]) -> list[tuple[str, float]]:
        """The best task and the router's confidence in it for each query, before any threshold.

        Confidence = the best task's score plus its margin over the runner-up: a query
        close to one task and far from all others is routed more readily than one
        equally close to two tasks. On the shipped labelled sets this sent more
        off-topic queries to the fallback than the bare score did (docs/router.md).
        """
        if not queries:
            return []
        idx, best, second = self.index.scores(self.encoder.encode(queries))
        confidence = 2 * best - second
        return [(self.library.tasks[i].name, float(c)) for i, c in zip(idx.tolist(), confidence)]

    def nearest_tasks(self, text: str, k: int = 3) -> list[tuple[str, float]]:
        """The k tasks whose centroids lie closest to `text`, with their cosines (best first)."""
        cosines, ids = self.index.centroid_search.search(self.encoder.encode([text]), min(k, len(self.library.tasks)))
        return [(self.library.tasks[i].name, float(c)) for i, c in zip(ids[0].tolist(), cosines[0].tolist()) if i >= 0]

    def route(self, queries: Sequence[str]) -> list[RouteDecision]:
        return [self.decide(query, name, score) for query, (name, score) in zip(queries, self.best_tasks(queries))]

    def decide(self, query: str, task: str, score: float) -> RouteDecision:
        if score >= self.threshold:
            return RouteDecision(task, self.library.task(task).descriptions[0], score)
        if self.fallback == "base":
            return RouteDecision(None, None, score, "base")
        text = " ".join(query.split())[: self.max_description_chars]
        return RouteDecision(None, text or None, score, "query")


def query_of_request(body: dict[str, Any]) -> str | None:
    """The text a request is about: the last user message of a chat (`messages`) or of a
    Responses API `input`, or a completion prompt."""
    messages = body.get("messages", body.get("input"))
    if isinstance(messages, str):  # Responses API: `input` may be the user's text itself
        return messages
    if isinstance(messages, list):
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                return _text_of(message.get("content"))
        return None
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    return prompt if isinstance(prompt, str) else None


def _text_of(content: object) -> str | None:
    """A message's text: a string, or its text parts (`text` in chat, `input_text` in Responses)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") in ("text", "input_text")]
        return "\n".join(p for p in parts if isinstance(p, str) and p) or None
    return None
