"""The adapter store: private folders per process, and clean-up of what ended processes left."""

from __future__ import annotations

import subprocess

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
