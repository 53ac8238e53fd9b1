"""vLLM endpoint plugin: `task_description` on /v1/chat/completions, /v1/completions and /v1/responses.

The plugin replaces those POST routes with thin wrappers that keep vLLM's own
handlers doing all the work (every other POST route answers a body carrying
`task_description` with a 400 instead of silently ignoring the field):

    body -> task_description? -> lease on a generated adapter from the deployment's
            adapter service (one process for all API servers: cache, batcher, store)
         -> register the adapter's name with vLLM's model registry
         -> body.model := adapter name -> vLLM's original handler (streaming or not)
         -> headers x-t2l-adapter / x-t2l-source -> release the lease when the
            response (or stream) ends

A request without a description is routed (`--router`): the router's task
description, the query itself, or none. With no router, or when the router
chooses the base model, the request reaches vLLM's handler unchanged. Bad input is
answered with an OpenAI-shaped error; nothing here can take the engine down: a
folder vLLM may load is never deleted while a request holds its lease.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import signal
import sys
import threading
from argparse import Namespace
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import ValidationError

from ..cache import Lease
from ..errors import AdapterCheckError, AdapterStoreError, GenerationError, InvalidDescriptionError, T2LError
from ..metrics import RequestMetrics
from ..router import query_of_request
from ..service.client import AdapterClient, service_socket_path, stored_adapter, wait_until_stopped
from ..service.settings import ServiceSettings
from .configured import NOT_CONFIGURED, PLUGIN_NAME, plugin_settings
from .engine_exits import EngineExits
from .lora_registry import ServedLoRAs

logger = logging.getLogger(__name__)

DESCRIPTION_FIELD = "task_description"
ADAPTER_HEADER = "x-t2l-adapter"
SOURCE_HEADER = "x-t2l-source"
TASK_HEADER = "x-t2l-task"
SCORE_HEADER = "x-t2l-score"


@dataclass
class T2LState:
    """Per-app state of the plugin, on `app.state.t2l`."""

    adapters: AdapterClient
    loras: ServedLoRAs
    metrics: RequestMetrics
    models: Any  # vLLM's OpenAIServingModels
    routed: bool  # the deployment has a router
    stopping: threading.Event  # set when vLLM begins shutting this API server's engine client down


@dataclass(frozen=True)
class _Route:
    """One wrapped vLLM route: its path, request model and original endpoint."""

    path: str
    request_model: type
    original: Callable[..., Awaitable[Response]]


def openai_error(status: HTTPStatus, message: str, param: str | None = None) -> JSONResponse:
    """An error body shaped as OpenAI's (and vLLM's): {"error": {message, type, param, code}}."""
    kind = status.phrase.replace(" ", "")
    kind = kind if kind.endswith("Error") else kind + "Error"  # BadRequestError, InternalServerError
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": status.value}}, status_code=status.value)


def deployment_socket_path(args: Namespace) -> Path:
    """The adapter service's socket for this deployment on this node.

    vLLM runs one API server in its main process, or several as children of it
    (`--api-server-count`, or data parallel): the main process's id names the
    deployment either way, so all its API servers reach one service.
    """
    several = (getattr(args, "api_server_count", None) or 1) > 1
    return service_socket_path(f"serve-{os.getppid() if several else os.getpid()}")


def served_routes() -> dict[str, type]:
    """The routes that serve `task_description`, with vLLM's request model for each."""
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.entrypoints.openai.completion.protocol import CompletionRequest
    from vllm.entrypoints.openai.responses.protocol import ResponsesRequest

    return {"/v1/chat/completions": ChatCompletionRequest, "/v1/completions": CompletionRequest, "/v1/responses": ResponsesRequest}


class T2LEndpointPlugin:
    """The `vllm.endpoint_plugins` entry point (a zero-argument factory)."""

    name = PLUGIN_NAME
    required_tasks = ("generate",)

    def attach_router(self, app: FastAPI) -> None:
        """Serves `task_description` on the generation routes and refuses it on every other POST route.

        vLLM replaces a route it already has with a plugin's route of the same path
        and method, so each wrapper stands in for vLLM's and calls vLLM's own code.
        """
        posts = {route.path: route for route in app.routes if isinstance(route, APIRoute) and "POST" in route.methods}
        router = APIRouter()
        for path, model in served_routes().items():
            if path not in posts:
                raise RuntimeError(f"t2l_vllm: vLLM has no POST {path} route to extend; is this vLLM 0.32?")
            router.add_api_route(path, _endpoint(_Route(path, model, posts[path].endpoint)), methods=["POST"])
        for path, route in posts.items():
            if path not in served_routes():
                router.add_api_route(path, _refusing_endpoint(route), methods=["POST"], include_in_schema=False)
        app.include_router(router)
        from .playground import attach_playground  # it builds on this module

        attach_playground(app)

    async def init_state(self, engine_client: Any, state: Any, args: Namespace) -> None:
        settings: ServiceSettings | None = plugin_settings(args)  # `t2l-vllm serve`'s, or the $T2L_VLLM_CONFIG file's
        if engine_client is None or settings is None:
            print(f"t2l_vllm: {NOT_CONFIGURED}; requests carrying `{DESCRIPTION_FIELD}` are refused with a 400.", file=sys.stderr, flush=True)
            return
        engine_exits: EngineExits | None = getattr(args, "t2l_engine_exits", None)
        if engine_exits is not None:
            engine_exits.watch_children()
        adapters = await AdapterClient.connect_or_start(deployment_socket_path(args), settings)
        loras = ServedLoRAs(state.openai_serving_models)
        for body in adapters.hello["preloaded"]:  # listed in /v1/models, servable by name
            loras.add(stored_adapter(body))
        adapters.on_removed(loras.discard)
        adapters.on_lost(_stop_this_server)
        atexit.register(_disconnect, adapters)
        _publish_service_metrics(adapters.hello)
        stopping = threading.Event()
        _notice_shutdown(engine_client, stopping)
        state.t2l = T2LState(
            adapters, loras, RequestMetrics(), state.openai_serving_models, routed=adapters.hello["router"] is not None, stopping=stopping,
        )
        if adapters.started:  # the API server that started the service reports it, once
            _print_start_up(adapters.hello)


def _print_start_up(hello: dict[str, Any]) -> None:
    print(
        f"t2l_vllm: hypernetwork {hello['hypernet']} ({hello['variant']}, fingerprint {hello['fingerprint'][:12]}) "
        f"for {hello['base_model']}; adapters r={hello['rank']} on {', '.join(hello['target_modules'])}; "
        f"POST /v1/chat/completions and /v1/completions accept `{DESCRIPTION_FIELD}`; "
        f"cache {hello['cache_entries']} adapters / {hello['cache_bytes'] / 2**20:.0f} MiB in {hello['store']} "
        f"(adapter service, pid {hello['pid']})",
        flush=True,
    )
    for body in hello["preloaded"]:
        print(f"t2l_vllm: preloaded {body['name']}", flush=True)
    router = hello["router"]
    if router is not None:
        print(
            f"t2l_vllm: router over {router['tasks']} tasks from {router['library']} "
            f"(threshold {router['threshold']:.3f}, fallback {router['fallback']}) for requests without `{DESCRIPTION_FIELD}`",
            flush=True,
        )


def _publish_service_metrics(hello: dict[str, Any]) -> None:
    """Adds the service's metrics to this API server's /metrics.

    Under several API servers vLLM reads one multiprocess folder, which the service
    writes into already; a single API server reads its own registry, so the
    service's private folder is added to it.
    """
    if hello["metrics_dir"] is None or "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        return
    from prometheus_client import REGISTRY
    from prometheus_client.multiprocess import MultiProcessCollector

    MultiProcessCollector(REGISTRY, path=hello["metrics_dir"])


def _disconnect(adapters: AdapterClient) -> None:
    """At exit: leave the service; if this process started it, wait until it has removed its folders
    (when the other API servers of the deployment have left too), so a stopped server leaves nothing."""
    adapters.close_now()
    if adapters.started:
        wait_until_stopped(adapters.socket_path, timeout_s=30)


def _notice_shutdown(engine_client: Any, stopping: threading.Event) -> None:
    """Sets `stopping` the moment vLLM calls `engine_client.shutdown` (on SIGTERM, SIGINT or a dead engine).

    vLLM drains the requests its engine holds, but its first step stops the
    tokenizer's thread pool: a request still on its way in (routed, or waiting for
    its adapter's pass) would reach it and fail with a bare 500. Knowing the moment
    lets the plugin answer those with a 503 that says to send them again.
    """
    shutdown = engine_client.shutdown

    def shutdown_noticed(*args: Any, **kwargs: Any) -> Any:
        stopping.set()
        return shutdown(*args, **kwargs)

    engine_client.shutdown = shutdown_noticed


SHUTTING_DOWN = (
    "The server is shutting down: it finishes the requests it has started and starts no new ones. "
    "Send this request again (to another replica)."
)


def _stop_this_server() -> None:
    """Without its adapter service a server cannot keep its promises: stop it, as vLLM does when its engine dies."""
    logger.error("t2l_vllm: the adapter service has gone; shutting this API server down.")
    os.kill(os.getpid(), signal.SIGTERM)


def _endpoint(route: _Route) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(raw_request: Request) -> Response:
        t2l: T2LState | None = getattr(raw_request.app.state, "t2l", None)
        try:
            body = json.loads(await raw_request.body())
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
            return _refuse(t2l, HTTPStatus.BAD_REQUEST, f"the request body is not valid JSON: {err}")
        if not isinstance(body, dict):
            return _refuse(t2l, HTTPStatus.BAD_REQUEST, "the request body must be a JSON object.")
        has_description = DESCRIPTION_FIELD in body
        description = body.pop(DESCRIPTION_FIELD, None)
        if has_description and description is None:
            return _refuse(t2l, HTTPStatus.BAD_REQUEST, f"`{DESCRIPTION_FIELD}` is null; give a string or leave the field out.", DESCRIPTION_FIELD)
        if has_description and t2l is None:
            return _refuse(t2l, HTTPStatus.BAD_REQUEST, f"`{DESCRIPTION_FIELD}` is not served: {NOT_CONFIGURED}.", DESCRIPTION_FIELD)
        if has_description and t2l is not None and (problem := _check_model(t2l, body.get("model"))) is not None:
            return _refuse(t2l, *problem)
        try:  # the whole body is checked before any adapter is made for it
            request = route.request_model.model_validate(body)
        except ValidationError as err:
            raise RequestValidationError(err.errors()) from err
        if t2l is None:
            return await _forward(route, request, raw_request, None, _Choice("none"), None)
        if t2l.stopping.is_set():  # no pass, no routing for a request that cannot start
            return _refuse(t2l, HTTPStatus.SERVICE_UNAVAILABLE, SHUTTING_DOWN)
        choice = _Choice("request") if has_description else _Choice("none")
        try:
            if not has_description:
                description, choice = await _route(t2l, body)
            lease, choice = await _lease(t2l, description, body.get("model"), choice)
        except T2LError as err:
            return _refuse(t2l, *_answer_to(err))
        return await _forward(route, request, raw_request, lease, choice, t2l)

    endpoint.__name__ = f"t2l_{route.path.strip('/').replace('/', '_')}"
    return endpoint


# How each failure to get an adapter is answered: the first class that matches wins.
_ERROR_STATUS: tuple[tuple[type[T2LError], HTTPStatus, str | None], ...] = (
    (InvalidDescriptionError, HTTPStatus.BAD_REQUEST, DESCRIPTION_FIELD),
    (AdapterCheckError, HTTPStatus.UNPROCESSABLE_ENTITY, DESCRIPTION_FIELD),
    (GenerationError, HTTPStatus.INTERNAL_SERVER_ERROR, None),  # the pass failed: not the request's fault
    (AdapterStoreError, HTTPStatus.SERVICE_UNAVAILABLE, None),  # the disk is full: retry when space returns
    (T2LError, HTTPStatus.SERVICE_UNAVAILABLE, None),  # the adapter service gone, an id collision
)


def _answer_to(err: T2LError) -> tuple[HTTPStatus, str, str | None]:
    """The status, message and `param` of the error answering a request whose adapter could not be had."""
    status, param = next((status, param) for cls, status, param in _ERROR_STATUS if isinstance(err, cls))
    message = f"`{DESCRIPTION_FIELD}`: {err}" if isinstance(err, InvalidDescriptionError) else str(err)
    return status, message, param


def _refusing_endpoint(route: APIRoute) -> Callable[[Request], Awaitable[Response]]:
    """vLLM's own handler for `route`, unless the JSON body carries `task_description`: then a 400
    that says where the field is served, rather than an answer that silently ignored it."""
    handler = route.get_route_handler()

    async def endpoint(raw_request: Request) -> Response:
        try:
            body = json.loads(await raw_request.body())  # cached on the request: vLLM's handler reads it again
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            body = None
        if isinstance(body, dict) and DESCRIPTION_FIELD in body:
            if not _has_api_key(raw_request):
                return JSONResponse({"error": "Unauthorized"}, status_code=HTTPStatus.UNAUTHORIZED.value)  # vLLM's own answer
            routes = ", ".join(f"POST {path}" for path in served_routes())
            return _refuse(
                getattr(raw_request.app.state, "t2l", None), HTTPStatus.BAD_REQUEST,
                f"`{DESCRIPTION_FIELD}` is not served on {route.path}; it is served on {routes}.", DESCRIPTION_FIELD,
            )
        return await handler(raw_request)

    endpoint.__name__ = f"t2l_refusing_{route.path.strip('/').replace('/', '_')}"
    return endpoint


def _has_api_key(request: Request) -> bool:
    """Whether the request carries a key `--api-key` accepts (True when no key is set).

    vLLM checks the key only under /v1, /v2, /inference and /cohere, so its /tokenize,
    /invocations, ... answer without one; the refusal of `task_description` there
    is the plugin's answer, and it is given only to a request with the key. The check
    is vLLM's own, configured as vLLM configured it.
    """
    from vllm.entrypoints.serve.middleware.authenticate import AuthenticationMiddleware

    for middleware in request.app.user_middleware:
        if middleware.cls is AuthenticationMiddleware:
            return AuthenticationMiddleware(request.app, *middleware.args, **middleware.kwargs).verify_token(request.headers)
    return True


@dataclass(frozen=True)
class _Choice:
    """Where a request's description came from, and the router's verdict if it chose."""

    source: str  # request | router | none
    task: str | None = None
    score: float | None = None
    adapter: str | None = None  # a trained adapter's name chosen by the router (else the description decides)

    def headers(self) -> dict[str, str]:
        headers = {SOURCE_HEADER: self.source}
        if self.task is not None:
            headers[TASK_HEADER] = quote(self.task, safe=":_-.")  # task names may be any Unicode
        if self.score is not None:
            headers[SCORE_HEADER] = f"{self.score:.4f}"
        return headers


async def _route(t2l: T2LState, body: dict) -> tuple[str | None, _Choice]:
    """The router's description for a request without one (None: leave the request as it is), or
    the name of the chosen task's trained adapter (`_Choice.adapter`).

    Only requests for the base model are routed; one that names a LoRA adapter or an
    unknown model goes to vLLM unchanged, which serves or refuses it as usual.
    """
    if not t2l.routed or _check_model(t2l, body.get("model")) is not None:
        return None, _Choice("none")
    query = query_of_request(body)
    if query is None or not query.strip():
        return None, _Choice("none")
    decision = await t2l.adapters.route(query)
    if decision.adapter is not None:
        return None, _Choice("router", decision.label, decision.score, decision.adapter)
    return decision.description, _Choice("router", decision.label, decision.score)


async def _lease(t2l: T2LState, description: str | None, model: object, choice: _Choice) -> tuple[Lease | None, _Choice]:
    """The lease a request runs under (its description's adapter, or a generated adapter it
    names), entered in vLLM's registry; None for the base model or another LoRA."""
    if choice.adapter is not None:  # the router's task has a trained adapter, kept by the service for its life
        lease = await t2l.adapters.lease_by_name(choice.adapter)
        if lease is None:
            raise T2LError(f"the trained adapter `{choice.adapter}` of router task `{choice.task}` is no longer kept.")
    elif description is not None:
        try:
            lease = await t2l.adapters.acquire(description)
        except InvalidDescriptionError:
            if choice.source != "router":
                raise
            return None, _Choice("router", "fallback:base", choice.score)  # the router's own text: serve the base model
    elif isinstance(model, str) and not t2l.models.is_base_model(model):
        lease = await t2l.adapters.lease_by_name(model)  # a client reusing a generated adapter's name
        if lease is None:
            return None, choice
        choice = _Choice("request")
    else:
        return None, choice
    try:
        t2l.loras.add(lease.stored)
    except BaseException:
        lease.release()
        raise
    return lease, choice


def _check_model(t2l: T2LState, model: object) -> tuple[HTTPStatus, str, str] | None:
    """A description applies to the base model; `model` may be omitted or name it."""
    if model is None or (isinstance(model, str) and t2l.models.is_base_model(model)):
        return None
    if isinstance(model, str) and model in t2l.loras:
        return (HTTPStatus.BAD_REQUEST, f"`{DESCRIPTION_FIELD}` cannot be combined with the LoRA adapter `{model}`; name the base model.", "model")
    return (HTTPStatus.NOT_FOUND, f"The model `{model}` does not exist.", "model")


async def _forward(route: _Route, request: Any, raw_request: Request, lease: Lease | None, choice: _Choice, t2l: T2LState | None) -> Response:
    """Runs vLLM's own handler on the (possibly re-targeted) request; the lease ends with the response."""
    try:
        if lease is not None:
            request.model = lease.name
        response = await route.original(request, raw_request)
        if response is None:  # vLLM's with_cancellation: the client went away
            response = Response(status_code=499)
        elif t2l is not None and t2l.stopping.is_set() and response.status_code == HTTPStatus.INTERNAL_SERVER_ERROR:
            response = _refuse(t2l, HTTPStatus.SERVICE_UNAVAILABLE, SHUTTING_DOWN)  # it met the stopped tokenizer
        response.headers[ADAPTER_HEADER] = lease.name if lease is not None else "base"
        response.headers.update(choice.headers())
    except BaseException:
        if lease is not None:
            lease.release()
        raise
    if t2l is not None:
        t2l.metrics.requests.labels(source=choice.source).inc()
    return response if lease is None else _LeasedResponse(response, lease)


class _LeasedResponse(Response):
    """Sends `inner` and releases the lease when sending ends, however it ends.

    Releasing from inside a streaming body would leak the lease when the client
    disconnects before the first chunk (the body generator never starts).
    """

    def __init__(self, inner: Response, lease: Lease) -> None:  # noqa: D107 - no body of its own
        self.inner, self.lease = inner, lease
        self.status_code = inner.status_code
        self.background = inner.background

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.inner.background = self.background  # FastAPI may have attached tasks to the wrapper
        try:
            await self.inner(scope, receive, send)
        finally:
            self.lease.release()


def _refuse(t2l: T2LState | None, status: HTTPStatus, message: str, param: str | None = None) -> JSONResponse:
    if t2l is not None:
        t2l.metrics.request_errors.labels(status=str(status.value)).inc()
    return openai_error(status, message, param)
