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
