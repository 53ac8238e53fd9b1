"""Losing the adapter service does not take the server down.

The adapter service is killed with SIGKILL (as the OOM killer would) while a steady
stream of base-model requests and of requests with a `task_description` runs. Base
requests are all answered; description requests get 503s with Retry-After (or, for
an adapter vLLM already serves, their answer) until a new service is up, then their
answers again; the server lives on, with one service per deployment, and leaves no
folder behind when it stops. A service that cannot start again is given up after a
bounded number of tries, with a clear refusal, while base serving goes on.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from functools import partial
from pathlib import Path

import httpx
import pytest

from conftest import API_KEY, CACHE_ENTRIES
from t2l_vllm.testing.load import Load as AnyLoad
from t2l_vllm.testing.processes import adapter_service_pids

Load = partial(AnyLoad, api_key=API_KEY)

pytestmark = pytest.mark.server

BACK_WITHIN_S = 30  # description requests are answered again within this after the service died
# vLLM's engine worker unpinned: on this project's 2-core VM a new service's `import torch` stalled for
# minutes in the kernel (MKL's per-CPU affinity probe) while the pinned worker was busy on CPU 0, in
# 3 of 7 runs with the default binding and 0 of 5 with none (docs/reliability.md). A kernel stall is
# not what these tests are about; `--service-start-timeout-s` is what bounds it in production.
NO_BIND = {"VLLM_CPU_OMP_THREADS_BIND": "nobind"}


def service_pids(server) -> list[int]:
    return adapter_service_pids(server.process.pid)


def wait_for(condition, timeout_s: float, what: str) -> None:
    """Waits for something the server does in its own time; not a timing assertion about speed."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout_s:.0f} s"
        time.sleep(0.2)


def health(server) -> dict:
    response = httpx.get(f"{server.url}/health", timeout=30)
    assert response.status_code == 200
    return response.json()


def kill_the_service_under_load(server, known: list[str], new: str) -> tuple[Load, float]:
    """Warms the `known` descriptions up, SIGKILLs the service while the load runs, then adds a `new` one
    (which needs a service to be made); returns once the new one is answered. Returns the load and the kill's time."""
    (pid,) = service_pids(server)
    with Load(server.url, list(known)) as load:
        wait_for(lambda: {o.description for o in load.described() if o.status == 200} == set(known), 120, "the warm-up")
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        load.descriptions.append(new)
        wait_for(lambda: any(o.status == 200 and o.description == new for o in load.described()), 120, "the service's return")
        time.sleep(2)  # a little load on the new service too
    return load, killed


def check_the_outage(load: Load, killed: float, new: str) -> None:
    """Base requests all answered; after the kill, description requests answered or refused with a 503
    that says to retry, the known ones answered from vLLM's registry, the new one again within the bound."""
    after = [o for o in load.described() if o.sent > killed]
    assert {o.status for o in after} <= {200, 503}, [o for o in after if o.status not in (200, 503)][:3]
    refused = [o for o in after if o.status == 503]
    assert all(o.retry_after and "being restarted" in o.message and o.description == new for o in refused), refused[:3]
    back = min(o.sent for o in after if o.status == 200 and o.description == new)
    assert back - killed < BACK_WITHIN_S
    bad_base = [o for o in load.base() if o.status != 200]
    during_outage = [o for o in load.base() if killed <= o.sent <= back]
    assert not bad_base and during_outage, (bad_base[:3], len(load.base()))  # served while the service was gone


KNOWN = ["Reverse the letters of every word.", "Uppercase every letter."]
NEW = "Sort the words alphabetically."


def test_a_killed_service_is_replaced_and_base_requests_never_fail(start_server, tmp_path):
    with start_server(tmp_path, [], env=NO_BIND) as server:
        load, killed = kill_the_service_under_load(server, KNOWN, NEW)
        check_the_outage(load, killed, NEW)
        during = [o for o in load.described() if o.sent > killed and o.description in KNOWN]
        assert during and all(o.status == 200 for o in during), [o for o in during if o.status != 200][:3]
        assert len(service_pids(server)) == 1 and server.alive()
        metrics = server.metrics()
        assert metrics.get('t2l_service_restarts_total{result="started"}') == 1, metrics
        assert server.adapter_folders() <= 2 * CACHE_ENTRIES


@pytest.mark.parametrize("api_servers", [2])
def test_with_two_api_servers_one_new_service_and_both_reconnect(start_server, tmp_path, api_servers):
    with start_server(tmp_path, ["--api-server-count", str(api_servers)], env=NO_BIND) as server:
        load, killed = kill_the_service_under_load(server, KNOWN, NEW)
        check_the_outage(load, killed, NEW)
        assert len(service_pids(server)) == 1
        metrics = server.metrics()
        restarts = {result: metrics.get(f't2l_service_restarts_total{{result="{result}"}}', 0) for result in ("started", "joined")}
        assert restarts == {"started": 1, "joined": api_servers - 1}, metrics  # one started it, the other joined
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120) as client:
            for i in range(8):  # requests land on both API servers (the kernel spreads connections): all served
                body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
                        "task_description": f"Count the vowels, round {i}."}
                assert client.post("/v1/chat/completions", json=body, headers={"Connection": "close"}).status_code == 200


def test_a_service_that_cannot_start_again_is_given_up_and_base_serving_goes_on(start_server, default_paths, tmp_path):
    hypernet = tmp_path / "hypernet"
    shutil.copytree(default_paths.hypernet, hypernet)
    options = ["--max-service-restarts", "2", "--service-start-timeout-s", "40"]  # a try that stalls is a failed try
    with start_server(tmp_path, ["--hypernet", str(hypernet), "--model", str(default_paths.base_model), *options], env=NO_BIND) as server:
        (pid,) = service_pids(server)
        (hypernet / "model.safetensors").write_bytes(b"not a checkpoint any more")  # corrupt, as a bad deploy would
        with Load(server.url, ["Reverse the letters of every word."]) as load:
            os.kill(pid, signal.SIGKILL)
            wait_for(lambda: health(server)["adapter_service"] == "failed", 120, "giving the service up")
            gave_up = time.monotonic()
            time.sleep(3)
        # No loop of restarts: no service is left once a stalled try's killed process has ended.
        wait_for(lambda: not service_pids(server), 120, "the end of every try's service")
        status = health(server)
        assert "tries to start it failed" in status["reason"] and "is corrupt" in status["reason"], status
        assert all(o.status == 200 for o in load.base()) and len(load.base()) > 5
        final = [o for o in load.described() if o.sent > gave_up]
        assert final and all(o.status == 503 and "could not be kept running" in o.message for o in final), final[:3]
        assert server.metrics().get('t2l_service_restarts_total{result="failed"}') == 1
        assert server.alive()
    assert Path(hypernet).exists()
