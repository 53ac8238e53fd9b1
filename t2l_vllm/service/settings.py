"""What the adapter service is started with, as plain data that crosses process boundaries.

vLLM hands its parsed options (with these settings on them) to every API server
process it spawns, and an API server hands them to the service it starts, as JSON
on the service's standard input. Defaults live on the dataclasses they belong to.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from ..cache import CacheSettings
from ..generator import GeneratorSettings
from ..router import RouterSettings


@dataclass(frozen=True)
class ServiceSettings:
    """The hypernetwork to serve, the bounds of its generator, cache and router, and what API servers add."""

    hypernet: str
    adapter_dir: str | None = None  # parent of the service's private folder; None: /dev/shm or the temp dir
    generator: GeneratorSettings = field(default_factory=GeneratorSettings)
    cache: CacheSettings = field(default_factory=CacheSettings)
    router: RouterSettings | None = None
    preload: tuple[str, ...] = ()  # descriptions generated at start-up and never removed
    playground: bool = True  # API servers serve GET /t2l/playground and POST /t2l/adapter (the service ignores it)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ServiceSettings":
        doc: dict[str, Any] = json.loads(text)
        router = doc.get("router")
        return cls(
            hypernet=doc["hypernet"],
            adapter_dir=doc.get("adapter_dir"),
            generator=GeneratorSettings(**doc.get("generator", {})),
            cache=CacheSettings(**doc.get("cache", {})),
            router=None if router is None else RouterSettings(**router),
            preload=tuple(doc.get("preload", ())),
            playground=doc.get("playground", cls.playground),
        )
