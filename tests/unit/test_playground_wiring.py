"""The playground's wiring without a server: the flag, the routes vLLM's app gets, the service's report op."""

from __future__ import annotations

import asyncio

import pytest

from t2l_vllm.errors import InvalidDescriptionError
from t2l_vllm.router import RouterSettings
from t2l_vllm.service.client import AdapterClient, service_socket_path, wait_until_stopped
from t2l_vllm.service.settings import ServiceSettings

PLAYGROUND_ROUTES = {("GET", "/t2l/playground"), ("POST", "/t2l/adapter")}


def serve_settings(*options: str, base: ServiceSettings | None = None) -> ServiceSettings:
    from t2l_vllm.cli import build_parser
    from t2l_vllm.cli.serve import service_settings

    args, _ = build_parser().parse_known_args(["serve", *options])
    return service_settings(args, "hypernet", base)


def test_the_playground_is_on_by_default_and_no_playground_turns_it_off():
    assert serve_settings().playground is True
    assert serve_settings("--no-playground").playground is False
    assert ServiceSettings.from_json(serve_settings("--no-playground").to_json()).playground is False
    # a settings file's `playground: false` holds unless a flag says otherwise
    assert serve_settings(base=ServiceSettings("h", playground=False)).playground is False
    assert serve_settings("--playground", base=ServiceSettings("h", playground=False)).playground is True


def playground_routes(monkeypatch, settings: ServiceSettings | None) -> set[tuple[str, str]]:
    """The playground's routes on the app vLLM builds with the t2l_vllm endpoint plugin named."""
    from fastapi.routing import APIRoute
    from vllm.entrypoints.launchers.app import build_app
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    monkeypatch.setenv("VLLM_PLUGINS", "t2l_vllm")
    args = make_arg_parser(FlexibleArgumentParser()).parse_args(["--model", "tiny", "--api-key", "key", "--enable-lora"])
    if settings is not None:
        args.t2l = settings
    app = build_app(args, ("generate",), None)
    routes = {(method, route.path) for route in app.routes if isinstance(route, APIRoute) for method in route.methods}
    return routes & PLAYGROUND_ROUTES


def test_vllm_app_has_the_playground_routes_unless_turned_off(monkeypatch):
    assert playground_routes(monkeypatch, ServiceSettings("h")) == PLAYGROUND_ROUTES
    assert playground_routes(monkeypatch, ServiceSettings("h", playground=False)) == set()
    assert playground_routes(monkeypatch, None) == set()  # the plugin loaded without `t2l-vllm serve`


def test_the_page_needs_nothing_from_elsewhere():
    from t2l_vllm.vllm_plugin.playground import page_html

    html = page_html()
    assert "<script>" in html and "http://" not in html and "https://" not in html and " src=" not in html


def test_report_makes_or_finds_the_adapter_and_refuses_what_acquire_refuses(default_paths, generator, tmp_path):
    async def scenario():
        settings = ServiceSettings(str(default_paths.hypernet), str(tmp_path / "adapters"), router=RouterSettings(library="starter"))
        path = service_socket_path(f"test-{tmp_path.name}")
        client = await AdapterClient.connect_or_start(path, settings)
        try:
            description = "Solve grade-school math word problems step by step."
            first = await client.report(description, 3)
            again = await client.report("  Solve grade-school math   word problems step by step. ", 3)
            assert first.name == again.name == generator.name_for(description)
            assert (first.generated, again.generated) == (True, False)
            assert first.milliseconds >= 0 and again.milliseconds >= 0
            assert len(first.nearest_tasks) == 3 and first.nearest_tasks == again.nearest_tasks
            scores = [score for _, score in first.nearest_tasks]
            assert scores == sorted(scores, reverse=True) and all(-1 <= s <= 1 for s in scores)
            assert (await client.report(description, 0)).nearest_tasks == ()
            lease = await client.acquire(description)  # the report left it in the cache, unleased
            assert lease.name == first.name
            lease.release()
            for bad in ("   ", 42, None, "x" * 3000, [{"description": "x", "weight": -1}]):
                with pytest.raises(InvalidDescriptionError) as by_acquire:
                    await client.acquire(bad)
                with pytest.raises(InvalidDescriptionError) as by_report:
                    await client.report(bad, 3)
                assert str(by_report.value) == str(by_acquire.value)
        finally:
            await client.close()
            assert wait_until_stopped(path, 30)

    asyncio.run(scenario())

