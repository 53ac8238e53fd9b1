"""The adapter service's wire format: typed messages, one JSON object per line over a Unix socket.

Every message is one of the dataclasses below, sent as its fields plus `op`:

    service -> client  {"op": "hello", "pid", "hypernet", "variant", "fingerprint", "base_model", "rank",
                        "target_modules", "cache_entries", "cache_bytes", "store", "metrics_dir",
                        "preloaded", "router", "catalog"}          first, on every connection
    client -> service  {"op": "acquire", "id", "description"}     -> leased
                       {"op": "lease", "id", "name"}              -> leased (adapter null: not kept)
                       {"op": "route", "id", "query"}             -> routed (with the lease of what it chose)
                       {"op": "report", "id", "description", "nearest"} -> reported
                       {"op": "release", "lease"}                 (no reply)
    service -> client  {"op": "leased", "id", "adapter"}
                       {"op": "routed", "id", "task", "description", "score", "fallback", "adapter"}
                       {"op": "reported", "id", "name", "generated", "milliseconds", "nearest_tasks"}
                       {"op": "failed", "id", "type", "message"}  the request's T2LError, by class name
                       {"op": "removed", "name"}                  an adapter's folder is gone: forget the name

`adapter` is {"name", "int_id", "path", "nbytes", "lease"}; a `catalog` entry is
{"id", "description", "adapter"}: a task a client may name as its model. A routed request takes
one round trip: the service routes the query and leases the adapter its choice
needs (a trained adapter, or the one generated for the chosen description).
`tests/unit/test_service_protocol.py` round-trips every message and holds this
table to the dataclasses.
"""

from __future__ import annotations

import asyncio
import json
import types
import typing
from dataclasses import asdict, dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any, ClassVar, Union

from ..adapter_store import AdapterIdCollisionError, StoredAdapter
from ..errors import AdapterCheckError, AdapterStoreError, ConfigError, GenerationError, InvalidDescriptionError, T2LError

# Descriptions are bounded by the generator's settings; this only bounds a line.
MAX_LINE_BYTES = 16 * 2**20

_ERRORS: dict[str, type[T2LError]] = {
    cls.__name__: cls
    for cls in (T2LError, InvalidDescriptionError, AdapterCheckError, AdapterIdCollisionError, ConfigError, GenerationError, AdapterStoreError)
}


class AdapterServiceError(T2LError):
    """The adapter service is unreachable, failed to start, or went away."""


# --- values inside messages ---------------------------------------------------------------------------
@dataclass(frozen=True)
class AdapterBody:
    """A stored adapter as the service describes it, with the number of the client's lease on it (if any)."""

    name: str
    int_id: int
    path: str
    nbytes: int
    lease: int | None = None

    @classmethod
    def of(cls, stored: StoredAdapter, lease: int | None = None) -> "AdapterBody":
        return cls(stored.name, stored.int_id, str(stored.path), stored.nbytes, lease)

    def stored(self) -> StoredAdapter:
        return StoredAdapter(self.name, Path(self.path), self.int_id, self.nbytes)


@dataclass(frozen=True)
class CatalogEntry:
    """A task a client may name as its `model` (`t2l/<name>`): a router library task or a preloaded description."""

    id: str
    description: str
    adapter: str | None  # the adapter kept for it (preloaded, or the task's trained one); None: generated on demand


@dataclass(frozen=True)
class RouterInfo:
    tasks: int
    library: str
    threshold: float
    fallback: str | None


# --- messages -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Hello:
    """What the service serves, sent first on every connection."""

    OP: ClassVar[str] = "hello"
    pid: int
    hypernet: str
    variant: str
    fingerprint: str
    base_model: str
    rank: int
    target_modules: list[str]
    cache_entries: int
    cache_bytes: int
    store: str
    metrics_dir: str | None  # the service's private metrics folder, for a lone API server to read; None: shared
    preloaded: list[AdapterBody]
    router: RouterInfo | None
    catalog: list[CatalogEntry]


@dataclass(frozen=True)
class Acquire:
    OP: ClassVar[str] = "acquire"
    id: int
    description: Any  # a description or a mix; the service validates it


@dataclass(frozen=True)
class LeaseByName:
    OP: ClassVar[str] = "lease"
    id: int
    name: str


@dataclass(frozen=True)
class Route:
    OP: ClassVar[str] = "route"
    id: int
    query: str


@dataclass(frozen=True)
class Report:
    OP: ClassVar[str] = "report"
    id: int
    description: Any
    nearest: int


@dataclass(frozen=True)
class Release:
    OP: ClassVar[str] = "release"
    lease: int


@dataclass(frozen=True)
class Leased:
    OP: ClassVar[str] = "leased"
    id: int
    adapter: AdapterBody | None


@dataclass(frozen=True)
class Routed:
    """The router's choice for a query, and the lease on the adapter that serves it (None: the base model)."""

    OP: ClassVar[str] = "routed"
    id: int
    task: str | None
    description: str | None
    score: float
    fallback: str | None
    adapter: AdapterBody | None

    @property
    def label(self) -> str:
        """The chosen task, or `fallback:query` / `fallback:base` (as `RouteDecision.label`)."""
        return self.task if self.task is not None else f"fallback:{self.fallback}"


@dataclass(frozen=True)
class Reported:
    """What the playground shows of a description's adapter."""

    OP: ClassVar[str] = "reported"
    id: int
    name: str
    generated: bool  # made for this call; False: it was in the cache already
    milliseconds: float  # the service's time to get it: batching wait and pass on a miss, the look-up on a hit
    nearest_tasks: tuple[tuple[str, float], ...]  # (task, cosine), best first


@dataclass(frozen=True)
class Failed:
    OP: ClassVar[str] = "failed"
    id: int
    type: str
    message: str

    @classmethod
    def of(cls, number: int, err: T2LError) -> "Failed":
        name = type(err).__name__ if type(err).__name__ in _ERRORS else T2LError.__name__
        return cls(number, name, str(err))

    def error(self) -> T2LError:
        return _ERRORS.get(self.type, T2LError)(self.message)


@dataclass(frozen=True)
class Removed:
    OP: ClassVar[str] = "removed"
    name: str


Request = Union[Acquire, LeaseByName, Route, Report, Release]
Reply = Union[Leased, Routed, Reported, Failed]
Message = Union[Hello, Request, Reply, Removed]
MESSAGES: dict[str, type] = {cls.OP: cls for cls in typing.get_args(Message)}


# --- encoding -----------------------------------------------------------------------------------------
def encode(message: Message) -> bytes:
    """One line of JSON. ASCII escapes carry any Python str, lone surrogates from a JSON body included."""
    return json.dumps({"op": message.OP, **asdict(message)}, separators=(",", ":")).encode("ascii") + b"\n"


def decode(line: bytes | str) -> Message:
    """The message a line holds; `ValueError` for one that is not a message of this protocol."""
    data = json.loads(line)
    if not isinstance(data, dict) or data.get("op") not in MESSAGES:
        raise ValueError(f"not an adapter service message: {str(line)[:200]!r}")
    return _build(MESSAGES[data.pop("op")], data)


async def read_message(reader: asyncio.StreamReader) -> Message | None:
    """The next message, or None at end of stream."""
    line = await reader.readline()
    return decode(line) if line else None


def _build(cls: type, data: Any) -> Any:
    """`cls` from decoded JSON, building nested dataclasses (plain, in a list, or optional) by their hints."""
    if not isinstance(data, dict):
        raise ValueError(f"{cls.__name__} must be an object, got {data!r}")
    hints = typing.get_type_hints(cls)
    try:
        return cls(**{f.name: _value(hints[f.name], data[f.name]) for f in fields(cls) if f.name in data})
    except TypeError as err:
        raise ValueError(f"malformed {cls.__name__}: {err}") from err


def _value(hint: Any, value: Any) -> Any:
    if value is None:
        return None
    if is_dataclass(hint):
        return _build(hint, value)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is list and args and is_dataclass(args[0]):
        return [_build(args[0], item) for item in value]
    if origin is tuple:  # JSON has lists only
        return tuple(tuple(item) if isinstance(item, list) else item for item in value)
    nested = [a for a in args if is_dataclass(a)] if origin in (Union, types.UnionType) else []
    return _build(nested[0], value) if nested else value
