"""The toy reproduction benchmark runs end to end at a tiny scale and writes a complete table."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "toy_reproduction.py"


def test_a_tiny_run_writes_every_arm_column_and_the_plot(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("toy_reproduction", BENCHMARK)
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "toy_reproduction", bench)  # dataclasses look their module up there
    spec.loader.exec_module(bench)
    assert bench.main(["--out", str(tmp_path), "--scale", "0.003"]) == 0
    report = json.loads((tmp_path / "table.json").read_text())
    table = report["table"]
    assert set(table) == {
        "base, no cue", "base, task tag in the prompt", "task-specific LoRAs (one per task)", "multi-task LoRA",
        "T2L recon (M)", "T2L SFT (L)", "T2L SFT (M)", "T2L SFT (S)",
    }
    for arm, row in table.items():
        assert set(bench.COLUMNS) <= set(row), arm
        assert all(0.0 <= v <= 1.0 for v in row.values()), (arm, row)
    for arm in ("T2L recon (M)", "T2L SFT (L)", "T2L SFT (M)", "T2L SFT (S)"):
        assert set(bench.CONTROLS) <= set(table[arm]), arm
    # the shipped base model knows the tasks when tagged, not without the tag
    assert table["base, task tag in the prompt"][bench.COLUMNS[0]] > table["base, no cue"][bench.COLUMNS[0]] + 0.5
    assert (tmp_path / "adapters.png").stat().st_size > 10_000
    assert (tmp_path / "loras" / "multitask" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "hypernets" / "sft-L" / "model.safetensors").is_file()
