"""A steady two-stream load on a server, every answer recorded: what a process's death does to clients.

Base-model requests every `base_every_s` and requests with a task description every
`described_every_s` (cycling through `descriptions`, which the caller may extend
while it runs), each from its own thread and HTTP client, as two kinds of users would.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import httpx


@dataclass
class Outcome:
    sent: float  # time.monotonic() when the request went out
    status: int  # -1: no HTTP answer at all (connection refused or reset)
    description: str | None
    retry_after: str | None
    message: str = ""  # the body of an error answer


@dataclass
class Load:
    url: str
    descriptions: list[str]
    api_key: str | None = None
    model: str = "tiny"
    base_every_s: float = 0.2
    described_every_s: float = 0.3
    max_tokens: int = 16
    headers: dict[str, str] = field(default_factory=dict)  # e.g. an affinity header behind vllm-router
    outcomes: list[Outcome] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._send, args=(False, self.base_every_s), daemon=True),
                         threading.Thread(target=self._send, args=(True, self.described_every_s), daemon=True)]

    def __enter__(self) -> "Load":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(120)

    def base(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.description is None]

    def described(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.description is not None]

    def _send(self, described: bool, every_s: float) -> None:
        headers = {**self.headers, **({"Authorization": f"Bearer {self.api_key}"} if self.api_key else {})}
        with httpx.Client(base_url=self.url, headers=headers, timeout=120) as client:
            i = 0
            while not self._stop.is_set():
                description = self.descriptions[i % len(self.descriptions)] if described else None
                body = {"model": self.model, "messages": [{"role": "user", "content": f"hello world {i}"}],
                        "max_tokens": self.max_tokens, "temperature": 0,
                        **({} if description is None else {"task_description": description})}
                sent = time.monotonic()
                try:
                    response = client.post("/v1/chat/completions", json=body)
                    outcome = Outcome(sent, response.status_code, description, response.headers.get("retry-after"),
                                      response.text if response.status_code != 200 else "")
                except httpx.HTTPError as err:
                    outcome = Outcome(sent, -1, description, None, repr(err))
                self.outcomes.append(outcome)
                i += 1
                time.sleep(every_s)
