"""Faults against real `t2l-vllm serve` processes: the engine killed, a hypernetwork pass
that raises, the adapter disk full, clients that hang up, SIGTERM with requests in flight.

Nothing is mocked. The one fault that cannot be caused for real, a pass that raises,
is injected by the named test-only hook `T2L_VLLM_TEST_ONLY_FAIL_PASSES_WITH`.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from t2l_vllm.service.fault_injection import FAIL_PASSES_ENV
from t2l_vllm.testing.processes import adapter_service_pids
from t2l_vllm.testing.tmpfs import MountNotPermitted, fill, mounted_tmpfs

pytestmark = pytest.mark.server

FAULT_MARKER = "FAULT-MARKER"
LONG = 400  # tokens: several seconds of generation on the tiny model, so a request is surely in flight


@dataclass
class Outcome:
    """How one request ended: finished (normally), aborted (vLLM's finish_reason), error (an HTTP
    error or an error event in the stream), or broken (no complete answer: the connection dropped)."""

    kind: str
    status: int
    detail: str


def headers(server) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.api_key}"}


def body(server, description: str | None, max_tokens: int, stream: bool) -> dict:
    payload = {"model": server.model, "prompt": "Once upon a time", "max_tokens": max_tokens, "ignore_eos": True, "stream": stream}
    if description is not None:
        payload["task_description"] = description
    return payload


def send(server, payload: dict, first_chunk: threading.Event | None = None) -> Outcome:
    """Sends a completion and classifies how it ended; sets `first_chunk` when the first token arrives."""
    try:
        with httpx.stream("POST", f"{server.url}/v1/completions", json=payload, headers=headers(server), timeout=120) as response:
            lines = []
            for line in response.iter_lines():
                if line:
                    lines.append(line)
                    if first_chunk is not None and line.startswith("data: {"):
                        first_chunk.set()
    except httpx.HTTPError as err:
        return Outcome("broken", 0, repr(err))
    if not payload.get("stream") or response.status_code != 200:
        answer = json.loads(lines[0]) if lines else {}
        if "error" in answer:
            return Outcome("error", response.status_code, answer["error"]["message"])
        return Outcome("aborted" if answer["choices"][0]["finish_reason"] == "abort" else "finished", response.status_code, "")
    if lines[-1] != "data: [DONE]":
        return Outcome("broken", response.status_code, lines[-1][:200])
    events = [json.loads(line[len("data: "):]) for line in lines[:-1]]
    errors = [e["error"] for e in events if "error" in e]
    if errors:
        return Outcome("error", errors[0]["code"], errors[0]["message"])
    return Outcome("aborted" if events[-1]["choices"][0]["finish_reason"] == "abort" else "finished", 200, "")


def complete(server, description: str | None = None, max_tokens: int = 2) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/completions", json=body(server, description, max_tokens, False), headers=headers(server), timeout=120)


def store_folder(server) -> Path:
    """The deployment's adapter folder under --adapter-dir (named after the server process that owns it)."""
    (folder,) = server.adapter_dir.glob("t2l_vllm-adapters-*")
    return folder


def service_process(server) -> psutil.Process:
    (pid,) = adapter_service_pids(server.process.pid)
    return psutil.Process(pid)


def engine_core(server) -> psutil.Process:
    children = psutil.Process(server.process.pid).children(recursive=True)
    (engine,) = [p for p in children if "EngineCore" in p.name() or any("EngineCore" in part for part in p.cmdline())]
    return engine


def adapter_folders(server) -> set[str]:
    return {p.name for p in server.adapter_dir.glob("t2l_vllm-adapters-*/t2l-*")}


def wait_for(condition, what: str, timeout_s: float = 60) -> None:
    """Waits for something another process does, with a generous deadline (not a timing assertion)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout_s:.0f} s"
        time.sleep(0.2)


def started(server, payloads: list[dict], first_chunks: list[threading.Event] | None = None) -> tuple[concurrent.futures.Future, ...]:
    """Sends the requests, each on its own thread, and returns their futures at once (`send` sets
    request n's first-chunk event, if given)."""
    pool = concurrent.futures.ThreadPoolExecutor(len(payloads))
    futures = tuple(pool.submit(send, server, p, e) for p, e in zip(payloads, first_chunks or [None] * len(payloads)))
    pool.shutdown(wait=False)
    return futures


def in_flight(server, payloads: list[dict]) -> tuple[concurrent.futures.Future, ...]:
    """Starts the requests and returns once every streaming one has received its first token."""
    first_chunks = [threading.Event() for _ in payloads]
    futures = started(server, payloads, first_chunks)
    for payload, event in zip(payloads, first_chunks):
        if payload["stream"]:
            assert event.wait(120), "a streaming request never started"
    return futures


# --- the engine killed, and a killed deployment's leftovers ---------------------------------------


def test_a_restart_sweeps_what_a_killed_server_left_and_a_killed_engine_fails_requests_in_flight_and_the_server(start_server, tmp_path):
    work = tmp_path / "deployment"  # both servers use work/adapters
    with start_server(work, []) as first:
        assert complete(first, "Left behind by a hard kill: count the commas.").status_code == 200
        left = store_folder(first)
        service = service_process(first)
        # What an OOM killer or a power cut does: every process at once, the detached service included.
        service.kill()
        os.killpg(first.process.pid, signal.SIGKILL)
        first.process.wait(60)
        service.wait(60)
        assert left.is_dir() and any(left.iterdir()), "a hard kill leaves the service's folder behind"

        # vLLM's "Added request" lines (INFO, with --enable-log-requests) tell when a request reached the engine.
        with start_server(work, ["--enable-log-requests"], env={"VLLM_LOGGING_LEVEL": "INFO"}, cli_options=("-v",)) as second:
            assert not left.exists(), "the restart in the same --adapter-dir swept the dead service's folder"
            cached = ["Served while the engine dies: repeat the prompt.", "Also served while the engine dies: shout."]
            assert all(complete(second, d).status_code == 200 for d in cached)
            service, engine = service_process(second), engine_core(second)
            # Frozen, the engine finishes nothing: the tiny model makes 400 tokens in a fraction of a
            # second, so a request seen streaming could otherwise be complete before the kill.
            engine.suspend()
            added = second.log.read_text().count("Added request")
            payloads = [body(second, d, LONG, stream) for d in (*cached, None) for stream in (True, False)]
            futures = started(second, payloads)
            wait_for(lambda: second.log.read_text().count("Added request") == added + len(payloads), "every request reaching the engine")
            engine.kill()
            done, pending = concurrent.futures.wait(futures, timeout=90)
            assert not pending, "a request in flight hung after the engine died"
            outcomes = [f.result() for f in futures]
            assert all(o.kind == "error" and o.status >= 500 for o in outcomes), outcomes

            assert second.process.wait(120) != 0  # a supervisor sees the failure and restarts the server
            log = second.log.read_text()
            assert "engine core process EngineCore" in log and "before the server stopped it" in log
            service.wait(60)  # its last client gone, the adapter service stopped and removed its folders
            assert not any(second.adapter_dir.iterdir())


# --- a hypernetwork pass that raises, the disk full, clients that hang up: one faulty server ------


@pytest.fixture(scope="module")
def faulty(start_server, tmp_path_factory):
    """A server whose passes fail for marked descriptions (test-only hook), with --adapter-dir on a
    16 MiB tmpfs the tests can fill."""
    work = tmp_path_factory.mktemp("faulty")
    try:
        with mounted_tmpfs(work / "adapters", 16 * 1024):
            with start_server(work, [], env={FAIL_PASSES_ENV: FAULT_MARKER}) as server:
                yield server
    except MountNotPermitted as err:
        pytest.skip(f"the full-disk test mounts a tmpfs as --adapter-dir, which is not permitted here: {err}")


def test_a_failing_pass_fails_only_the_requests_waiting_on_it_with_a_500_and_the_next_succeed(faulty):
    cached = "Cached before the fault: list the verbs."
    assert complete(faulty, cached).status_code == 200
    before = faulty.metrics()
    doomed = [f"{FAULT_MARKER} one: summarise."] * 4 + [f"{FAULT_MARKER} two: translate."]
    bystanders = [cached, None]  # a cache hit and the base model, in flight at the same time
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        failing = [pool.submit(complete, faulty, d) for d in doomed]
        bystanding = [pool.submit(complete, faulty, d, 8) for d in bystanders]
        failed, served = [f.result() for f in failing], [f.result() for f in bystanding]
    for response in failed:
        assert response.status_code == 500, response.text
        error = response.json()["error"]
        assert "adapter generation failed" in error["message"] and error["type"] == "InternalServerError"
    assert [r.status_code for r in served] == [200, 200]
    assert complete(faulty, "After the fault: a new description.").status_code == 200
    assert complete(faulty, doomed[0]).status_code == 500  # a failure is not cached: it is tried (and fails) again
    after = faulty.metrics()
    assert after['t2l_request_errors_total{status="500"}'] - before.get('t2l_request_errors_total{status="500"}', 0) == 6
    wait_for(lambda: faulty.metrics()["t2l_adapter_pins"] == 0, "every lease given back")
    assert faulty.alive()


def test_a_full_adapter_disk_is_a_503_naming_it_while_cached_adapters_and_the_base_model_keep_serving(faulty):
    cached = "Cached before the disk filled: name the colours."
    assert complete(faulty, cached).status_code == 200
    ballast = fill(faulty.adapter_dir)
    try:
        refused = complete(faulty, "A new description while the disk is full.")
        assert refused.status_code == 503, refused.text
        message = refused.json()["error"]["message"]
        assert f"the disk holding the adapter folders ({faulty.adapter_dir}) is full" in message and "--adapter-dir" in message
        for description in (cached, None):
            for stream in (False, True):
                assert send(faulty, body(faulty, description, 8, stream)).kind == "finished"
    finally:
        ballast.unlink()
    recovered = complete(faulty, "A new description while the disk is full.")
    assert recovered.status_code == 200, recovered.text
    assert faulty.alive()


def hang_up_before_the_first_byte(server, payload: dict) -> None:
    """Sends a whole request and closes the connection without reading a byte of the answer."""
    raw = json.dumps(payload).encode()
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as conn:
        conn.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     + f"Authorization: Bearer {server.api_key}\r\nContent-Length: {len(raw)}\r\n\r\n".encode() + raw)


def hang_up_mid_stream(server, payload: dict) -> None:
    """Reads the first token of a stream, then closes the connection."""
    with httpx.stream("POST", f"{server.url}/v1/completions", json=payload, headers=headers(server), timeout=120) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                return


def test_a_hundred_clients_hanging_up_leak_no_lease_pin_or_folder(faulty):
    """Half hang up before the first byte, half mid-stream; their descriptions are new (waiting on
    a pass when they go), cached, or none."""
    cached = "Cached before the hang-ups: find the dates."
    assert complete(faulty, cached).status_code == 200
    descriptions = [cached, None] + [f"Hang-up task {i}: label the tone." for i in range(20)]
    jobs = [(hang_up_before_the_first_byte if i % 2 else hang_up_mid_stream, body(faulty, descriptions[i % len(descriptions)], LONG, True))
            for i in range(100)]
    with concurrent.futures.ThreadPoolExecutor(25) as pool:
        list(pool.map(lambda job: job[0](faulty, job[1]), jobs))

    def settled() -> bool:
        metrics = httpx.get(f"{faulty.url}/metrics", timeout=30).text
        running = sum(float(l.rsplit(" ", 1)[1]) for l in metrics.splitlines() if l.startswith(("vllm:num_requests_running{", "vllm:num_requests_waiting{")))
        t2l = faulty.metrics()
        return running == 0 and t2l["t2l_adapter_pins"] == 0 and t2l["t2l_adapters_retired"] == 0

    wait_for(settled, "every abandoned request ended, its lease given back and evicted adapters removed", 180)
    t2l = faulty.metrics()
    folders = adapter_folders(faulty)
    assert len(folders) == t2l["t2l_adapters_resident"] <= 16  # --adapter-cache-entries 16: nothing else kept
    registered = {m["id"] for m in httpx.get(f"{faulty.url}/v1/models", headers=headers(faulty), timeout=30).json()["data"]}
    assert {name for name in registered if name.startswith("t2l-")} <= folders  # vLLM names only what exists
    assert send(faulty, body(faulty, cached, 4, True)).kind == "finished"


# --- SIGTERM with requests in flight --------------------------------------------------------------


def test_sigterm_lets_requests_in_flight_finish_then_everything_is_removed(start_server, tmp_path):
    from t2l_vllm.service.client import service_socket_path

    with start_server(tmp_path / "sigterm", ["--shutdown-timeout", "60"]) as server:
        cached = "Cached before the SIGTERM: count the nouns."
        assert complete(server, cached).status_code == 200
        service = service_process(server)
        socket_path = service_socket_path(f"serve-{server.process.pid}")
        payloads = [body(server, d, LONG, stream) for d in (cached, None, "A new task when SIGTERM came.") for stream in (True, False)]
        futures = in_flight(server, payloads)
        os.kill(server.process.pid, signal.SIGTERM)  # the server's process, as docker stop and Kubernetes do
        latecomers = arrivals_while_draining(server, futures)
        done, pending = concurrent.futures.wait(futures, timeout=180)
        assert not pending, "a request in flight hung after SIGTERM"
        outcomes = [f.result() for f in futures]
        streams = [o for o, p in zip(outcomes, payloads) if p["stream"]]
        assert all(o.kind == "finished" for o in streams), outcomes  # running when the SIGTERM came: drained
        # The rest may not have reached the engine yet (routed, or waiting for their pass): finished,
        # cleanly aborted, or told the server is stopping, never a bare 500.
        assert all(o.kind in ("finished", "aborted") or told_to_retry(o) for o in outcomes), outcomes
        assert latecomers and told_to_retry(latecomers[-1]), latecomers  # a request arriving during the drain
        assert all(o.kind == "finished" or told_to_retry(o) for o in latecomers), latecomers

        assert server.process.wait(120) == 0  # a requested stop
        service.wait(60)
        assert not any(server.adapter_dir.iterdir())
        assert [p.name for p in socket_path.parent.glob(socket_path.name + "*")] == []  # socket and lock files too
        wait_for(lambda: group_gone(server.process.pid), "every process of the server's group ending")


def arrivals_while_draining(server, in_flight: tuple[concurrent.futures.Future, ...]) -> list[Outcome]:
    """Sends one short request after another while the requests in flight drain, until one is told
    the server is stopping (the SIGTERM has been handled) or the drain ends; returns how each ended."""
    outcomes: list[Outcome] = []
    while not all(f.done() for f in in_flight):
        outcomes.append(send(server, body(server, None, 2, False)))
        if told_to_retry(outcomes[-1]):
            break
    return outcomes


def told_to_retry(outcome: Outcome) -> bool:
    """A 503 that says the server is stopping and to send the request again."""
    return outcome.kind == "error" and outcome.status == 503 and "shutting down" in outcome.detail and "again" in outcome.detail


def group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False
