"""`t2l-vllm serve` refuses bad settings before vLLM starts: one line, exit 2, no traceback."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from safetensors.torch import load_file, save_file


def serve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "t2l_vllm", "serve", *args], capture_output=True, text=True, timeout=300)


def assert_refused(result: subprocess.CompletedProcess, fragment: str) -> None:
    assert result.returncode == 2, result.stderr[-2000:]
    assert fragment in result.stderr and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "vLLM" not in result.stdout  # vLLM never started: nothing of its start-up was printed


def test_altered_hypernetwork_weights_are_refused_before_vllm_starts(default_paths, tmp_path):
    altered = tmp_path / "hypernet"
    shutil.copytree(default_paths.hypernet, altered)
    weights = load_file(str(altered / "model.safetensors"))
    key = sorted(weights)[0]
    weights[key] = weights[key] + 1e-3
    save_file(weights, str(altered / "model.safetensors"), {"format": "t2l_vllm.hypernet/1"})
    assert_refused(serve("--hypernet", str(altered), "--model", str(default_paths.base_model)), "does not match the fingerprint")


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["--adapter-cache-entries", "0"], "`max_entries` must be positive, got 0"),
        (["--hypernet-batch-wait-ms", "-1"], "`max_wait_ms` must be >= 0"),
        (["--semantic-cache-threshold", "2"], "`semantic_threshold` is a cosine"),
        (["--max-delta-norm", "0"], "`max_delta_norm` must be positive"),
        (["--router", "{tmp}/no-library.yaml"], "no-library.yaml"),
        (["--preload", "{tmp}/missing.txt"], "cannot read `--preload"),
        (["--preload", "{tmp}/long.txt"], "`--preload`, description 2: the task description has 3000 characters"),
    ],
)
def test_bad_flags_and_files_are_refused_before_vllm_starts(tmp_path, args, fragment):
    (tmp_path / "long.txt").write_text("A fine description.\n" + "x" * 3000 + "\n")
    assert_refused(serve(*[a.format(tmp=tmp_path) for a in args]), fragment)
