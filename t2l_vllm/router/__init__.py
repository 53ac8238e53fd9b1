"""Automatic per-query adaptation: pick a task description for a query that has none.

The decision is split the way semantic routers split it, one module each:

- `library`: the data. `TaskLibrary` holds tasks, each with descriptions and
  example queries, read from YAML, plus the calibrated threshold and the fallback;
- the encoder (text -> unit vectors): the task encoder, set up for cosines
  (`router_encoder`);
- `index`: the vectors. `TaskIndex` embeds every description and example once and
  scores a query against each task, exactly up to 8,192 tasks and through a faiss
  inverted file above;
- `router`: the choice. `EmbeddingRouter` takes the best task if its confidence
  reaches the threshold, else the fallback;
- `calibration`: `fit_threshold` and `evaluate` on labelled queries.
"""

from .calibration import EvalReport, Labelled, evaluate, fit_threshold, load_labelled
from .index import SCORINGS, Scoring, TaskIndex
from .library import FALLBACKS, STARTER_LIBRARY, Fallback, RouterConfigError, Task, TaskLibrary
from .router import DEFAULT_THRESHOLD, EmbeddingRouter, RouteDecision, RouterSettings, query_of_request, router_encoder

__all__ = [
    "DEFAULT_THRESHOLD",
    "FALLBACKS",
    "SCORINGS",
    "STARTER_LIBRARY",
    "EmbeddingRouter",
    "EvalReport",
    "Fallback",
    "Labelled",
    "RouteDecision",
    "RouterConfigError",
    "RouterSettings",
    "Scoring",
    "Task",
    "TaskIndex",
    "TaskLibrary",
    "evaluate",
    "fit_threshold",
    "load_labelled",
    "query_of_request",
    "router_encoder",
]
