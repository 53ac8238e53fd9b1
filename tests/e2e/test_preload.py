"""`t2l-vllm serve --preload FILE`: generated adapters that clients, and vLLM's own benchmark, name directly."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from t2l_vllm.default_model import default_paths

pytestmark = pytest.mark.server

MESSAGE = "pear apple fig"
def test_preloaded_adapters_are_listed_and_drive_vllm_bench_serve(start_server, tmp_path):
    """`--preload FILE`: the names are printed, listed in /v1/models, and vLLM's own
    `bench serve --lora-modules NAME... --lora-assignment round-robin` serves them."""
    descriptions = ["Convert the text to uppercase.", "Sort the words alphabetically.", "Return only the first word."]
    preload = tmp_path / "preload.txt"
    preload.write_text("\n".join(descriptions) + "\n\n")
    with start_server(tmp_path, ["--preload", str(preload)]) as server:
        client = server.client()
        names = [line.split()[-1] for line in server.log.read_text().splitlines() if line.startswith("t2l_vllm: preloaded ")]
        assert len(names) == 3
        assert set(names) <= {m.id for m in client.models.list().data}
        answer = client.chat.completions.create(model=names[0], messages=[{"role": "user", "content": MESSAGE}], max_tokens=16, temperature=0)
        described = client.chat.completions.create(model=server.model, messages=[{"role": "user", "content": MESSAGE}], max_tokens=16,
                                                   temperature=0, extra_body={"task_description": descriptions[0]})
        assert answer.choices[0].message.content == described.choices[0].message.content
        before = server.metrics()
        result = tmp_path / "bench.json"
        bench = subprocess.run(
            [sys.executable, "-c", "import sys; from vllm.benchmarks.serve import main, add_cli_args; import argparse; "
             "p = argparse.ArgumentParser(); add_cli_args(p); main(p.parse_args(sys.argv[1:]))",
             "--backend", "openai", "--base-url", server.url, "--model", server.model, "--tokenizer", str(default_paths().base_model),
             "--dataset-name", "random", "--random-input-len", "8", "--random-output-len", "4", "--num-prompts", "12",
             "--lora-modules", *names, "--lora-assignment", "round-robin", "--save-result", "--result-dir", str(tmp_path),
             "--result-filename", result.name],
            capture_output=True, text=True, timeout=600, env={**os.environ, "OPENAI_API_KEY": server.api_key},
        )
        assert bench.returncode == 0, bench.stdout[-3000:] + bench.stderr[-3000:]
        report = json.loads(result.read_text())
        assert report["completed"] == 12 and report.get("failed", 0) == 0, report
        after = server.metrics()
        assert after["t2l_requests_total{source=\"request\"}"] - before.get("t2l_requests_total{source=\"request\"}", 0) == 12
        assert after["t2l_generations_total"] == before["t2l_generations_total"]  # nothing generated: all preloaded
