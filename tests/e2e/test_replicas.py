"""Two `t2l-vllm serve` replicas behind a real `vllm-router` (consistent_hash), on loopback.

With `t2l_vllm.affinity_headers(description)` as the session key, every description
is generated on one replica only, and both replicas (and the router) give the
same answer for the same description: adapters are named and built from content.
"""

from __future__ import annotations

import contextlib

import httpx
import pytest

from t2l_vllm import affinity_headers
from t2l_vllm.testing.servers import replica_set, vllm_router

pytestmark = pytest.mark.server

MESSAGE = "one two three"
DESCRIPTIONS = [
    "Convert the text to uppercase.",
    "Sort the words alphabetically.",
    "Spell the whole input backwards, last character first.",
    "Give just the first letter of every word.",
    "Return only the first word.",
    "How many words are there? Answer with a number.",
]


def ask(url: str, api_key: str, description: str, headers: dict[str, str] | None = None) -> tuple[str, str]:
    body = {"model": "tiny", "messages": [{"role": "user", "content": MESSAGE}], "max_tokens": 16, "temperature": 0,
            "task_description": description}
    reply = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=300,
                       headers={"Authorization": f"Bearer {api_key}", **(headers or {})})
    assert reply.status_code == 200, reply.text
    return reply.json()["choices"][0]["message"]["content"], reply.headers["x-t2l-adapter"]


def generations(server) -> float:
    return server.metrics().get("t2l_generations_total", 0.0)


def test_replicas_behind_vllm_router_generate_each_description_once_and_agree(start_server, new_port, tmp_path):
    with contextlib.ExitStack() as stack:
        replicas = stack.enter_context(replica_set(2, lambda i: start_server(tmp_path / f"replica{i}", [])))
        router = stack.enter_context(vllm_router([r.url for r in replicas], tmp_path / "router.log", port=new_port())).url
        key = replicas[0].api_key
        before = [generations(r) for r in replicas]
        through_router = {}
        for _ in range(3):  # the same descriptions again and again, each with its session key
            for description in DESCRIPTIONS:
                through_router.setdefault(description, set()).add(ask(router, key, description, affinity_headers(description)))
        generated = [generations(r) - b for r, b in zip(replicas, before)]
        assert sum(generated) == len(DESCRIPTIONS), generated  # once in the fleet each
        assert all(len(answers) == 1 for answers in through_router.values()), through_router
        for description, answers in through_router.items():
            direct = {ask(r.url, key, description) for r in replicas}
            assert direct == answers, (description, direct, answers)  # same adapter name and answer everywhere
