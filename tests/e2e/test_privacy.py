"""Descriptions may carry user data: they stay out of logs and metric labels, adapter folders are
private to their owner, and with `--api-key` every route that serves or refuses the field needs it."""

from __future__ import annotations

import os

import httpx
import pytest

pytestmark = pytest.mark.server

SECRET = "PRIVATE-7f3a9c Jane Roe, account 4411"  # recognisable in any log line


def description_requests(server) -> list[tuple[str, dict]]:
    """Every way a description reaches the server: served (streaming or not), refused as bad, refused on a
    route that does not serve it, beside an invalid body."""
    task = f"Answer in the voice of {SECRET}."
    chat = [{"role": "user", "content": "hello"}]
    served = []
    for stream in (False, True):
        served += [
            ("/v1/completions", {"model": server.model, "prompt": "hello", "max_tokens": 2, "stream": stream, "task_description": task}),
            ("/v1/chat/completions", {"model": server.model, "messages": chat, "max_tokens": 2, "stream": stream, "task_description": task}),
            ("/v1/responses", {"model": server.model, "input": "hello", "max_output_tokens": 2, "stream": stream, "task_description": task}),
        ]
    refused = [
        ("/v1/completions", {"model": server.model, "prompt": "hello", "max_tokens": 2, "task_description": task + "x" * 3000}),
        ("/v1/chat/completions", {"model": server.model, "messages": "not a list", "task_description": task}),
        ("/v1/completions", {"model": "no-such-model", "prompt": "hello", "task_description": task}),
        ("/v1/messages", {"model": server.model, "max_tokens": 2, "messages": chat, "task_description": task}),
        ("/tokenize", {"model": server.model, "prompt": "hello", "task_description": task}),
    ]
    return served + refused


def test_descriptions_never_reach_the_logs_at_info_nor_metric_labels(start_server, tmp_path):
    env = {"VLLM_LOGGING_LEVEL": "INFO", "T2L_VLLM_SERVICE_LOG_LEVEL": "INFO"}
    with start_server(tmp_path / "logged", ["--enable-log-requests"], env=env, cli_options=("-v",)) as server:
        headers = {"Authorization": f"Bearer {server.api_key}"}
        statuses = [httpx.post(f"{server.url}{path}", json=body, headers=headers, timeout=120).status_code
                    for path, body in description_requests(server)]
        assert statuses == [200] * 6 + [400, 400, 404, 400, 400]
        metrics = httpx.get(f"{server.url}/metrics", timeout=30).text
    log = server.log.read_text(errors="replace")
    assert "Received request" in log and "lora_request: LoRARequest(lora_name='t2l-" in log  # vLLM's request log was on
    assert "PRIVATE-7f3a9c" not in log
    assert "PRIVATE-7f3a9c" not in metrics


def test_adapter_folders_are_private_to_the_server(server):
    httpx.post(f"{server.url}/v1/completions", headers={"Authorization": f"Bearer {server.api_key}"}, timeout=120,
               json={"model": server.model, "prompt": "hello", "max_tokens": 1, "task_description": "A folder only its owner reads."})
    stores = list(server.adapter_dir.glob("t2l_vllm-adapters-*"))
    adapters = list(server.adapter_dir.glob("t2l_vllm-adapters-*/t2l-*"))
    assert stores and adapters
    assert {oct(os.stat(p).st_mode & 0o777) for p in stores + adapters} == {"0o700"}


def every_post_route() -> list[str]:
    """The POST routes of vLLM's own app (the plugin wraps each one), as vLLM builds it for a generative model."""
    from fastapi.routing import APIRoute
    from vllm.entrypoints.launchers.app import build_app
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    args = make_arg_parser(FlexibleArgumentParser()).parse_args(["--model", "tiny", "--api-key", "key", "--enable-lora"])
    app = build_app(args, ("generate",), None)
    return sorted(r.path.replace("{response_id}", "resp_x") for r in app.routes if isinstance(r, APIRoute) and "POST" in r.methods)


def test_every_route_that_serves_or_refuses_the_field_needs_the_api_key(server):
    from t2l_vllm.vllm_plugin.internals import served_request_models as served_routes

    routes = every_post_route()
    assert set(served_routes()) <= set(routes) and len(routes) > 10
    body = {"model": server.model, "prompt": "hello", "max_tokens": 1, "task_description": "An unauthorised description."}
    before = server.metrics()["t2l_generations_total"]
    for path in routes:
        for key in (None, "wrong-key"):
            headers = {} if key is None else {"Authorization": f"Bearer {key}"}
            response = httpx.post(f"{server.url}{path}", json=body, headers=headers, timeout=60)
            assert response.status_code == 401, (path, key, response.status_code, response.text[:200])
    assert server.metrics()["t2l_generations_total"] == before  # nothing was made for an unauthorised request
    for path in set(routes) - set(served_routes()):  # with the key: the refusal itself
        response = httpx.post(f"{server.url}{path}", json=body, headers={"Authorization": f"Bearer {server.api_key}"}, timeout=60)
        assert response.status_code == 400 and "`task_description` is not served on" in response.text, (path, response.text[:200])
