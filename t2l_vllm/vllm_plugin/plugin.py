"""The `vllm.endpoint_plugins` entry point: attaches the routes, and connects each API server to the adapter service.

vLLM calls `attach_router(app)` while it builds an API server's app and then
`init_state(engine_client, state, args)` once the engine runs. The routes are
`routes.py`'s (and the playground's); the state is one connection to the
deployment's adapter service, the process that generates, caches and stores
adapters for every API server of the deployment.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
from argparse import Namespace
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from ..adapter_store import remove_deployment_store
from ..metrics import RequestMetrics
from ..service.client import service_socket_path, wait_until_stopped
from ..service.link import ServiceLink
from ..service.protocol import Hello
from ..service.settings import ServiceSettings
from .configured import NOT_CONFIGURED, PLUGIN_NAME, plugin_settings
from .engine_exits import EngineExits
from .http import DESCRIPTION_FIELD
from .internals import check_fixes, notice_shutdown
from .lora_registry import ServedLoRAs
from .playground import attach_playground
from .resolver import attach_resolver
from .routes import attach_routes
from .state import T2LState

logger = logging.getLogger(__name__)


def deployment_owner(args: Namespace) -> int:
    """The process that owns this deployment on this node: vLLM runs one API server in its main
    process, or several as children of it (`--api-server-count`, or data parallel)."""
    several = (getattr(args, "api_server_count", None) or 1) > 1
    return os.getppid() if several else os.getpid()


def deployment_socket_path(args: Namespace) -> Path:
    """The adapter service's socket for this deployment on this node: named by the deployment's owner,
    so all its API servers reach one service."""
    return service_socket_path(f"serve-{deployment_owner(args)}")


class T2LEndpointPlugin:
    """The `vllm.endpoint_plugins` entry point (a zero-argument factory)."""

    name = PLUGIN_NAME
    required_tasks = ("generate",)

    def attach_router(self, app: FastAPI) -> None:
        attach_routes(app)
        attach_playground(app)

    async def init_state(self, engine_client: Any, state: Any, args: Namespace) -> None:
        settings: ServiceSettings | None = plugin_settings(args)  # `t2l-vllm serve`'s, or the $T2L_VLLM_CONFIG file's
        if engine_client is None or settings is None:
            print(f"t2l_vllm: {NOT_CONFIGURED}; requests carrying `{DESCRIPTION_FIELD}` are refused with a 400.", file=sys.stderr, flush=True)
            return
        check_fixes()
        engine_exits: EngineExits | None = getattr(args, "t2l_engine_exits", None)
        if engine_exits is not None:
            engine_exits.watch_children()
        metrics = RequestMetrics()
        adapters = await ServiceLink.connect(deployment_socket_path(args), settings, deployment_owner(args), metrics)
        loras = ServedLoRAs(state.openai_serving_models)

        def register_preloaded(hello: Hello) -> None:  # listed in /v1/models, servable by name
            for body in hello.preloaded:
                loras.add(body.stored())

        register_preloaded(adapters.hello)
        adapters.on_removed(loras.discard)
        adapters.on_restored(register_preloaded)  # a service started again after one died
        atexit.register(_disconnect, adapters)
        _publish_service_metrics(adapters.hello)
        stopping = threading.Event()
        notice_shutdown(engine_client, stopping)  # requests still on their way in get a 503, not a bare 500
        state.t2l = T2LState(
            adapters, settings, loras, metrics, state.openai_serving_models, routed=adapters.hello.router is not None, stopping=stopping,
        )
        attach_resolver(state.t2l)
        if adapters.started:  # the API server that started the service reports it, once
            _print_start_up(adapters.hello)


def _print_start_up(hello: Hello) -> None:
    print(
        f"t2l_vllm: hypernetwork {hello.hypernet} ({hello.variant}, fingerprint {hello.fingerprint[:12]}) "
        f"for {hello.base_model}; adapters r={hello.rank} on {', '.join(hello.target_modules)}; "
        f"POST /v1/chat/completions and /v1/completions accept `{DESCRIPTION_FIELD}`; "
        f"cache {hello.cache_entries} adapters / {hello.cache_bytes / 2**20:.0f} MiB in {hello.store} "
        f"(adapter service, pid {hello.pid})",
        flush=True,
    )
    for body in hello.preloaded:
        print(f"t2l_vllm: preloaded {body.name}", flush=True)
    router = hello.router
    if router is not None:
        print(
            f"t2l_vllm: router over {router.tasks} tasks from {router.library} "
            f"(threshold {router.threshold:.3f}, fallback {router.fallback}) for requests without `{DESCRIPTION_FIELD}`",
            flush=True,
        )


def _publish_service_metrics(hello: Hello) -> None:
    """Adds the service's metrics to this API server's /metrics.

    Under several API servers vLLM reads one multiprocess folder, which the service
    writes into already; a single API server reads its own registry, so the
    service's private folder is added to it.
    """
    if hello.metrics_dir is None or "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        return
    from prometheus_client import REGISTRY
    from prometheus_client.multiprocess import MultiProcessCollector

    MultiProcessCollector(REGISTRY, path=hello.metrics_dir)


def _disconnect(adapters: ServiceLink) -> None:
    """At exit: leave the service; if this process started it, wait until it has removed its folders
    (when the other API servers of the deployment have left too), so a stopped server leaves nothing.
    The deployment's owner also removes what a service it gave up on left."""
    adapters.close_now()
    if adapters.started or adapters.status == "failed":
        stopped = wait_until_stopped(adapters.socket_path, timeout_s=30)
        if stopped and adapters.owner_pid == os.getpid():
            remove_deployment_store(adapters.settings.adapter_dir, adapters.socket_path, os.getpid())
