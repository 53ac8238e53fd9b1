"""The adapter service as a real process, reached by real clients over its Unix socket."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from t2l_vllm.cache import CacheSettings
from t2l_vllm.errors import ConfigError, InvalidDescriptionError
from t2l_vllm.service.client import AdapterClient, service_socket_path, wait_until_stopped
from t2l_vllm.service.protocol import AdapterServiceError
from t2l_vllm.service.settings import ServiceSettings
from t2l_vllm.testing.processes import pids_with_argument


def settings_for(default_paths, tmp_path: Path, **cache) -> ServiceSettings:
    return ServiceSettings(str(default_paths.hypernet), str(tmp_path / "adapters"), cache=CacheSettings(removal_grace_s=0, **cache))


def socket_files(socket_path) -> list[str]:
    """What a service leaves beside its socket path: nothing, once it has stopped."""
    return [p.name for p in Path(socket_path).parent.glob(Path(socket_path).name + "*")]


def folders(client: AdapterClient) -> set[str]:
    return {p.name for p in Path(client.hello.store).iterdir() if not p.name.startswith(".")}


def service_metric(client: AdapterClient, name: str) -> float:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=client.hello.metrics_dir)
    return sum(s.value for m in registry.collect() for s in m.samples if s.name == name)


async def wait_for(condition, timeout_s: float = 10.0) -> None:
    """Waits for something another process does (a removal message); not a timing assertion."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


def test_two_clients_share_one_service_one_generation_per_description_and_folders_outlive_leases(default_paths, tmp_path):
    async def scenario():
        settings = settings_for(default_paths, tmp_path, max_entries=2, max_wait_ms=50)
        path = service_socket_path(f"test-{tmp_path.name}")
        first = await AdapterClient.connect_or_start(path, settings)
        second = await AdapterClient.connect_or_start(path, settings)
        assert first.started and not second.started and second.hello.pid == first.hello.pid
        removed: list[str] = []
        second.on_removed(removed.append)

        descriptions = [f"Shared task {i % 4}: label the sentiment." for i in range(32)]
        leases = await asyncio.gather(*(client.acquire(d) for client, d in zip([first, second] * 16, descriptions)))
        assert len({lease.name for lease in leases}) == 4
        assert service_metric(first, "t2l_generations_total") == 4  # single flight across clients
        held = next(lease for lease in leases if lease.name == leases[0].name)
        for lease in leases:
            if lease is not held:
                lease.release()
        for i in range(3):  # churn the 2-entry cache from the other client: `held` is evicted
            (await second.acquire(f"Churn task {i}: count the words.")).release()
        await wait_for(lambda: len(removed) >= 4)
        assert held.name in folders(first) and held.stored.path.is_dir()
        held.release()
        await wait_for(lambda: held.name in removed)
        assert not held.stored.path.exists()

        store = Path(first.hello.store)
        await first.close()
        await second.close()
        assert wait_until_stopped(path, 30)
        assert not store.exists() and socket_files(path) == []

    asyncio.run(scenario())


def test_a_client_that_dies_gives_back_every_lease_it_held(default_paths, tmp_path):
    async def scenario():
        settings = settings_for(default_paths, tmp_path, max_entries=1)
        path = service_socket_path(f"test-{tmp_path.name}")
        keeper = await AdapterClient.connect_or_start(path, settings)
        doomed = await AdapterClient.connect_or_start(path, settings)
        removed: list[str] = []
        keeper.on_removed(removed.append)
        held = await doomed.acquire("Doomed task: find the verbs.")
        (await keeper.acquire("Another task: find the nouns.")).release()  # evicts `held`, which stays pinned
        assert held.stored.path.is_dir()
        doomed.close_now()  # the connection ends without a single release
        await wait_for(lambda: held.name in removed)
        assert not held.stored.path.exists()
        await keeper.close()
        assert wait_until_stopped(keeper.socket_path, 30)

    asyncio.run(scenario())


def test_bad_input_is_the_same_error_class_across_the_socket_and_the_service_keeps_serving(default_paths, tmp_path):
    async def scenario():
        client = await AdapterClient.connect_or_start(service_socket_path(f"test-{tmp_path.name}"), settings_for(default_paths, tmp_path))
        for bad, fragment in [("   ", "empty"), (17, "must be a string"), ("x" * 5000, "limit is 2048")]:
            with pytest.raises(InvalidDescriptionError, match=fragment):
                await client.acquire(bad)
        lease = await client.acquire("A good description after bad ones.")
        assert lease.stored.path.is_dir()
        assert await client.lease_by_name("t2l-" + "0" * 24) is None
        again = await client.lease_by_name(lease.name)
        assert again is not None and again.stored == lease.stored
        lease.release()
        again.release()
        await client.close()
        assert wait_until_stopped(client.socket_path, 30)

    asyncio.run(scenario())


def test_a_service_that_cannot_start_says_why_and_leaves_nothing(tmp_path):
    path = service_socket_path(f"test-{tmp_path.name}")

    async def scenario():
        settings = ServiceSettings(str(tmp_path / "no-such-hypernet"), str(tmp_path / "adapters"))
        with pytest.raises(ConfigError, match="no-such-hypernet"):
            await AdapterClient.connect_or_start(path, settings)

    asyncio.run(scenario())
    assert not any((tmp_path / "adapters").glob("t2l_vllm-adapters-*"))
    assert socket_files(path) == []


def test_a_start_that_hangs_is_stopped_at_its_bound_with_the_service_it_forked(default_paths, tmp_path):
    """A real hang: the starting service is stopped (SIGSTOP) before it is ready, as a process stuck
    on a hung mount or in the kernel would be; the start gives up at its bound and kills it."""
    path = service_socket_path(f"test-{tmp_path.name}")
    settings = replace(settings_for(default_paths, tmp_path), service_start_timeout_s=20)
    stopped: set[int] = set()
    done = threading.Event()

    def stop_every_process_of_the_start() -> None:  # the detaching parent and the service it forks
        while not done.is_set():
            for pid in set(pids_with_argument(str(path))) - stopped:
                os.kill(pid, signal.SIGSTOP)
                stopped.add(pid)
            time.sleep(0.005)

    async def scenario():
        stopper = asyncio.create_task(asyncio.to_thread(stop_every_process_of_the_start))
        try:
            with pytest.raises(AdapterServiceError, match="did not become ready within 20 s"):
                await AdapterClient.connect_or_start(path, settings)
        finally:
            done.set()
            await stopper

    asyncio.run(scenario())
    assert stopped, "the service was not seen starting"
    assert not pids_with_argument(str(path)), "the hung service was left running"
    assert socket_files(path) == []


def test_preloaded_adapters_are_listed_in_the_greeting_and_outlive_any_churn(default_paths, tmp_path):
    async def scenario():
        preload = ("Preloaded task one: count the vowels.", "Preloaded task two: sort the letters.", "Preloaded task three: shout.")
        settings = replace(settings_for(default_paths, tmp_path, max_entries=2), preload=preload)
        client = await AdapterClient.connect_or_start(service_socket_path(f"test-{tmp_path.name}"), settings)
        names = [body.name for body in client.hello.preloaded]
        assert len(names) == 3 and len(set(names)) == 3
        for i in range(6):  # churn the 2-entry cache well past the preloaded adapters
            (await client.acquire(f"Churn task {i}: reverse the words.")).release()
        assert names[0] in folders(client)
        for name in names:
            lease = await client.lease_by_name(name)
            assert lease is not None and lease.stored.path.is_dir()
            lease.release()
        await client.close()
        assert wait_until_stopped(client.socket_path, 30)

    asyncio.run(scenario())


def test_a_refused_preload_stops_start_up_with_the_reason(default_paths, tmp_path):
    path = service_socket_path(f"test-{tmp_path.name}")

    async def scenario():
        settings = replace(settings_for(default_paths, tmp_path), preload=("A fine description.", "   "))
        with pytest.raises(ConfigError, match="preloaded description 2 of 2 was refused: the task description is empty"):
            await AdapterClient.connect_or_start(path, settings)

    asyncio.run(scenario())
    assert not any((tmp_path / "adapters").glob("t2l_vllm-adapters-*/t2l-*"))
    assert wait_until_stopped(path, 30) and socket_files(path) == []


def test_a_lock_file_removed_by_its_holder_is_never_held_twice(tmp_path):
    """A waiter that gets the lock of a file its holder removed moves to the path's new file,
    so lock files can be deleted and two processes never both hold the same lock."""
    import threading

    from t2l_vllm.service.locks import lock_file

    path = str(tmp_path / "x.lock")
    holder = lock_file(path)
    got = []
    waiter = threading.Thread(target=lambda: got.append(lock_file(path)))
    waiter.start()
    time.sleep(0.2)  # let the waiter block on the held file (whether it has yet does not change the outcome)
    Path(path).unlink()
    holder.close()
    waiter.join(10)
    assert not waiter.is_alive() and Path(path).exists()
    import os

    assert os.fstat(got[0].fileno()).st_ino == os.stat(path).st_ino  # it holds the file the path names
    got[0].close()
