"""The adapter store: private folders per process, and clean-up of what ended processes left."""

from __future__ import annotations

import subprocess

import pytest

from t2l_vllm.adapter_store import AdapterStore


def test_folders_of_ended_processes_are_swept_and_live_ones_kept(tmp_path, generator):
    ended = subprocess.Popen(["true"])
    ended.wait()
    orphan = tmp_path / f"t2l_vllm-adapters-{ended.pid}-abc"
    (orphan / "t2l-x").mkdir(parents=True)
    live = AdapterStore(tmp_path)
    other = AdapterStore(tmp_path)  # a second live store: must not sweep the first
    stored = live.put(generator.generate(["Sweep test task."])[0])
    assert not orphan.exists()
    assert stored.path.is_dir() and live.root != other.root
    live.close()
    other.close()
    assert list(tmp_path.iterdir()) == []


def test_two_adapters_with_one_integer_id_are_never_both_stored(tmp_path, generator, monkeypatch):
    """A forced collision: a named fake id function gives every adapter the same id (real
    content ids collide with probability 2**-60 per pair, so one cannot be produced honestly)."""
    import t2l_vllm.adapter_store as adapter_store
    from t2l_vllm.adapter_store import AdapterIdCollisionError

    def colliding_int_id(name: str) -> int:  # FAKE: the fault cannot otherwise be caused
        return 2**40

    monkeypatch.setattr(adapter_store, "adapter_int_id", colliding_int_id)
    store = AdapterStore(tmp_path)
    first, second = generator.generate(["Collision task one.", "Collision task two."])
    kept = store.put(first)
    with pytest.raises(AdapterIdCollisionError, match=first.name):
        store.put(second)
    assert store.get(second.name) is None and not (store.root / second.name).exists()
    assert store.put(first) == kept  # the holder is unaffected
    store.remove(first.name)
    assert store.put(second).int_id == 2**40  # once the holder is gone, the id is free
    store.close()


def test_content_ids_are_stable_and_clear_of_vllms_own_counter(generator):
    from t2l_vllm.descriptions import ADAPTER_ID_OFFSET, adapter_int_id

    names = [generator.name_for(f"Id task {i}.") for i in range(200)]
    ids = [adapter_int_id(n) for n in names]
    assert ids == [adapter_int_id(n) for n in names] and len(set(ids)) == len(ids)
    assert all(ADAPTER_ID_OFFSET <= i < 2**63 for i in ids)


@pytest.fixture
def small_disk(tmp_path):
    """A real 256 KiB filesystem (tmpfs) that the test can fill."""
    from t2l_vllm.testing.tmpfs import MountNotPermitted, mounted_tmpfs

    try:
        with mounted_tmpfs(tmp_path / "disk", 256) as disk:
            yield disk
    except MountNotPermitted as err:
        pytest.skip(f"a full disk needs a tmpfs mounted by the test: {err}")


def test_a_full_disk_is_an_error_that_names_it_and_leaves_nothing_half_written(small_disk, generator):
    from t2l_vllm.errors import AdapterStoreError
    from t2l_vllm.testing.tmpfs import fill

    store = AdapterStore(small_disk)
    kept = store.put(generator.generate(["Written before the disk filled."])[0])
    ballast = fill(small_disk)
    late = generator.generate(["Written while the disk is full."])[0]
    with pytest.raises(AdapterStoreError, match=rf"disk holding the adapter folders \({small_disk}\) is full.*--adapter-dir"):
        store.put(late)
    assert [p.name for p in store.root.iterdir()] == [kept.name]  # no half-written folder, the kept one intact
    assert store.get(late.name) is None
    ballast.unlink()
    assert store.put(late).path.is_dir()  # space is back: it is written
    store.close()


def test_store_folders_are_private_to_their_owner(tmp_path, generator):
    store = AdapterStore(tmp_path)
    stored = store.put(generator.generate(["A description that may carry user data."])[0])
    assert store.root.stat().st_mode & 0o777 == 0o700
    assert stored.path.stat().st_mode & 0o777 == 0o700
    store.close()


def test_a_trained_folder_is_copied_in_under_a_name_from_its_content(tmp_path, generator):
    trained = generator.generate(["A LoRA someone trained."])[0].save_peft(tmp_path / "trained")
    before = {p.name: p.read_bytes() for p in trained.iterdir()}
    store = AdapterStore(tmp_path / "store")
    try:
        stored = store.put_folder(trained)
        assert stored.path.parent == store.root and stored.path != trained
        assert {p.name: p.read_bytes() for p in stored.path.iterdir()} == before
        assert store.put_folder(trained) == stored  # the same content is the same adapter
        other = generator.generate(["Another LoRA someone trained."])[0].save_peft(tmp_path / "other")
        assert store.put_folder(other).name != stored.name
        store.remove(stored.name)
        assert {p.name: p.read_bytes() for p in trained.iterdir()} == before  # the user's folder is never touched
    finally:
        store.close()
