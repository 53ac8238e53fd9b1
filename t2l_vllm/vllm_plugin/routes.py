"""The generation routes with `task_description`, and the refusal of the field everywhere else.

    body -> task_description? -> lease on a generated adapter from the deployment's
            adapter service (one process for all API servers: cache, batcher, store)
         -> register the adapter's name with vLLM's model registry
         -> model := adapter name -> vLLM's original handler (streaming or not)
         -> headers x-t2l-adapter / x-t2l-source -> release the lease when the
            response (or stream) ends

A request without a description is routed (`--router`): the router's task
description, the query itself, or none. With no router, or when the router
chooses the base model, the request reaches vLLM's handler unchanged. Nothing
here can take the engine down: a folder vLLM may load is never deleted while a
request holds its lease.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from ..cache import Lease
from ..descriptions import CATALOG_PREFIX, DEFAULT_MAX_DESCRIPTION_CHARS, DESCRIPTION_MODEL_PREFIX, generated_name, normalize_task
from ..errors import T2LError
from ..router import query_of_request
from ..service.link import ServiceUnavailableError
from .configured import NOT_CONFIGURED
from .http import (
    ADAPTER_HEADER,
    DESCRIPTION_FIELD,
    SCORE_HEADER,
    SOURCE_HEADER,
    TASK_HEADER,
    has_api_key,
    json_body,
    refuse,
    refuse_for,
)
from .internals import routes_of, served_request_models
from .request_task import RequestTask, RequestTaskError, task_of
from .state import T2LState

SHUTTING_DOWN = (
    "The server is shutting down: it finishes the requests it has started and starts no new ones. "
    "Send this request again (to another replica)."
)


@dataclass(frozen=True)
class _Route:
    """One wrapped vLLM route: its path, request model and original endpoint."""

    path: str
    request_model: type
    original: Callable[..., Awaitable[Response]]


def attach_routes(app: FastAPI) -> None:
    """Serves `task_description` on the generation routes and refuses it on every other POST route.

    vLLM replaces a route it already has with a plugin's route of the same path
    and method, so each wrapper stands in for vLLM's and calls vLLM's own code.
    """
    posts = routes_of(app, "POST")
    served = served_request_models()
    router = APIRouter()
    gets = routes_of(app, "GET")
    if HEALTH_PATH in gets:
        router.add_api_route(HEALTH_PATH, _extended_get(gets[HEALTH_PATH], "t2l_health", _with_service_state), methods=["GET"],
                             include_in_schema=False)
    if MODELS_PATH in gets:
        router.add_api_route(MODELS_PATH, _extended_get(gets[MODELS_PATH], "t2l_models", _with_catalog), methods=["GET"])
    for path, model in served.items():
        if path not in posts:
            raise RuntimeError(f"t2l_vllm: vLLM has no POST {path} route to extend; is this the vLLM t2l_vllm requires?")
        router.add_api_route(path, _endpoint(_Route(path, model, posts[path].endpoint)), methods=["POST"])
    for path, route in posts.items():
        if path not in served:
            router.add_api_route(path, _refusing_endpoint(route, list(served)), methods=["POST"], include_in_schema=False)
    app.include_router(router)


def _endpoint(route: _Route) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(raw_request: Request) -> Response:
        t2l: T2LState | None = getattr(raw_request.app.state, "t2l", None)
        body, problem = await json_body(raw_request)
        if problem is not None:
            return refuse(t2l, HTTPStatus.BAD_REQUEST, problem)
        if not isinstance(body, dict):
            return refuse(t2l, HTTPStatus.BAD_REQUEST, "the request body must be a JSON object.")
        try:
            task = task_of(body, raw_request.headers, t2l.adapters.catalog if t2l else {},
                           t2l.settings.generator.max_description_chars if t2l else DEFAULT_MAX_DESCRIPTION_CHARS)
        except RequestTaskError as err:
            return refuse(t2l, err.status, err.message, err.param)
        if task.given and t2l is None:
            return refuse(t2l, HTTPStatus.BAD_REQUEST, f"`{task.field}` is not served: {NOT_CONFIGURED}.", task.field)
        if task.source in ("request", "header") and t2l is not None and (problem_of_model := _check_model(t2l, body.get("model"))) is not None:
            return refuse(t2l, *problem_of_model)
        try:  # the whole body is checked before any adapter is made for it
            request = route.request_model.model_validate(body)
        except ValidationError as err:
            raise RequestValidationError(err.errors()) from err
        if t2l is None:
            return await _forward(route, request, raw_request, None, _Choice("none"), None)
        if t2l.stopping.is_set():  # no pass, no routing for a request that cannot start
            return refuse(t2l, HTTPStatus.SERVICE_UNAVAILABLE, SHUTTING_DOWN)
        try:
            lease, choice = await (lease_for(t2l, task) if task.given else _route(t2l, body))
        except T2LError as err:
            return refuse_for(t2l, err, task.field)
        return await _forward(route, request, raw_request, lease, choice, t2l)

    endpoint.__name__ = f"t2l_{route.path.strip('/').replace('/', '_')}"
    return endpoint


HEALTH_PATH = "/health"
MODELS_PATH = "/v1/models"


def _extended_get(route: Any, name: str, extend: Callable[[T2LState, Response], Response]) -> Callable[[Request], Awaitable[Response]]:
    """vLLM's own GET handler for `route`; a 200 it gives is handed to `extend` while the plugin serves."""
    handler = route.get_route_handler()

    async def endpoint(raw_request: Request) -> Response:
        response = await handler(raw_request)
        t2l: T2LState | None = getattr(raw_request.app.state, "t2l", None)
        return response if t2l is None or response.status_code != HTTPStatus.OK else extend(t2l, response)

    endpoint.__name__ = name
    return endpoint


def _with_catalog(t2l: T2LState, response: Response) -> Response:
    """vLLM's model list, and after it the tasks a client may name as its `model` (`t2l/<task>`): a chat
    front end's model picker then offers them. Each says what it does (`description`, beside OpenAI's fields)."""
    listing = json.loads(response.body)
    present = {card.get("id") for card in listing.get("data", [])}
    base, now = t2l.models.model_name(), int(time.time())
    listing["data"] += [
        {"id": entry.id, "object": "model", "created": now, "owned_by": "t2l_vllm", "root": None, "parent": base,
         "max_model_len": None, "permission": [], "description": entry.description}
        for entry in t2l.adapters.catalog.values() if entry.id not in present
    ]
    return JSONResponse(listing)


def _with_service_state(t2l: T2LState, response: Response) -> Response:
    """vLLM's /health (200 while its engine lives, 503 once it is dead), with the adapter service's state in
    the body: {"adapter_service": "up" | "restarting" | "failed", "reason": ...}. The status stays vLLM's:
    without its adapter service the server still serves requests without a description."""
    return JSONResponse({"adapter_service": t2l.adapters.status, "reason": t2l.adapters.reason or None})


def _refusing_endpoint(route: Any, served: list[str]) -> Callable[[Request], Awaitable[Response]]:
    """vLLM's own handler for `route`, unless the JSON body carries `task_description`: then a 400
    that says where the field is served, rather than an answer that silently ignored it.

    A `model` naming a task (`t2l:<description>`, `t2l/<task>`) is resolved by vLLM through the
    plugin's LoRA resolver (`resolver.py`), which keeps a bounded window of names; this route holds a
    lease on the adapter until its response has been sent, as the generation routes do, so the folder
    vLLM loads it from outlives every request that uses it, also once the window has let the name go."""
    handler = route.get_route_handler()

    async def endpoint(raw_request: Request) -> Response:
        body, _ = await json_body(raw_request)
        t2l: T2LState | None = getattr(raw_request.app.state, "t2l", None)
        if isinstance(body, dict) and DESCRIPTION_FIELD in body:
            if not has_api_key(raw_request):
                return JSONResponse({"error": "Unauthorized"}, status_code=HTTPStatus.UNAUTHORIZED.value)  # vLLM's own answer
            routes = ", ".join(f"POST {path}" for path in served)
            return refuse(
                t2l, HTTPStatus.BAD_REQUEST,
                f"`{DESCRIPTION_FIELD}` is not served on {route.path}; it is served on {routes}.", DESCRIPTION_FIELD,
            )
        model = body.get("model") if isinstance(body, dict) else None
        if t2l is None or not (isinstance(model, str) and model.startswith((DESCRIPTION_MODEL_PREFIX, CATALOG_PREFIX))):
            return await handler(raw_request)
        if not has_api_key(raw_request):  # vLLM checks no key on some of these routes (/tokenize); making an adapter needs one
            return JSONResponse({"error": "Unauthorized"}, status_code=HTTPStatus.UNAUTHORIZED.value)
        from .resolver import handling  # here: resolver.py imports this module

        lease = await _lease_named_task(t2l, model)
        try:
            with handling(model):  # the name stays in vLLM's registry until vLLM has looked it up for good
                response = await handler(raw_request)
        except BaseException:
            if lease is not None:
                lease.release()
            raise
        return response if lease is None else _LeasedResponse(response, lease)

    endpoint.__name__ = f"t2l_refusing_{route.path.strip('/').replace('/', '_')}"
    return endpoint


@dataclass(frozen=True)
class _Choice:
    """Where a request's description came from, and the router's verdict if it chose."""

    source: str  # request (the body field) | header | model | router | none
    task: str | None = None
    score: float | None = None

    def headers(self) -> dict[str, str]:
        headers = {SOURCE_HEADER: self.source}
        if self.task is not None:
            headers[TASK_HEADER] = quote(self.task, safe=":_-.")  # task names may be any Unicode
        if self.score is not None:
            headers[SCORE_HEADER] = f"{self.score:.4f}"
        return headers


async def _route(t2l: T2LState, body: dict) -> tuple[Lease | None, _Choice]:
    """The lease the router's choice needs for a request without a description (None: the request goes
    as it is), in one round trip to the service.

    Only requests for the base model are routed; one that names a LoRA adapter or an unknown model
    goes to vLLM unchanged, which serves or refuses it as usual (a client reusing a generated adapter's
    name is leased that adapter).
    """
    model = body.get("model")
    if not t2l.routed or _check_model(t2l, model) is not None:
        return await _lease_named(t2l, model)
    query = query_of_request(body)
    if query is None or not query.strip():
        return None, _Choice("none")
    decision, lease = await t2l.adapters.route(query)
    return _registered(t2l, lease), _Choice("router", decision.label, decision.score)


async def lease_for(t2l: T2LState, task: RequestTask) -> tuple[Lease | None, _Choice]:
    """The lease on a request's task: a listed task's kept adapter, or its description's. While the
    adapter service is being restarted, an adapter vLLM already knows is served all the same (`_known`)."""
    name = task.adapter
    try:
        if name is not None:
            lease = await t2l.adapters.lease_by_name(name)
            if lease is None:
                raise T2LError(f"the adapter `{name}` kept for the task `{task.description or name}` is no longer kept.")
        else:
            lease = await t2l.adapters.acquire(task.description)
    except ServiceUnavailableError:
        lease = _known(t2l, name or _name_of(t2l, task.description))
        if lease is None:
            raise
    return _registered(t2l, lease), _Choice(task.source)


async def _lease_named_task(t2l: T2LState, model: str) -> Lease | None:
    """A lease on the adapter of a task named by `model`, or None where it names none that can be had (then the
    resolver declines it too, and vLLM answers that the model does not exist)."""
    try:
        lease, _ = await lease_for(t2l, task_of({"model": model}, {}, t2l.adapters.catalog, t2l.settings.generator.max_description_chars))
    except (RequestTaskError, T2LError):
        return None
    return lease


async def _lease_named(t2l: T2LState, model: object) -> tuple[Lease | None, _Choice]:
    """A lease on the generated adapter a client names by `model` (reusing a name it was given); None for the
    base model or another LoRA, which vLLM serves or refuses as usual."""
    if not isinstance(model, str) or t2l.models.is_base_model(model):
        return None, _Choice("none")
    try:
        lease = await t2l.adapters.lease_by_name(model)
    except ServiceUnavailableError:
        lease = _known(t2l, model)
        if lease is None:
            raise
    return (None, _Choice("none")) if lease is None else (_registered(t2l, lease), _Choice("request"))


def _name_of(t2l: T2LState, description: object) -> str:
    """The adapter name the service would give a description, computed here (it is content-derived);
    raises `InvalidDescriptionError` for what the service would refuse."""
    return generated_name(normalize_task(description, t2l.settings.generator.max_description_chars), t2l.adapters.hello.fingerprint)


def _known(t2l: T2LState, name: str) -> Lease | None:
    """A lease held in this API server on an adapter vLLM already serves by name (its folder is the
    deployment's, and the next service will be asked for it), or None."""
    stored = t2l.loras.stored(name)
    return None if stored is None else t2l.adapters.hold(stored)


def _registered(t2l: T2LState, lease: Lease | None) -> Lease | None:
    """The lease, its adapter entered in vLLM's registry (given back if that fails)."""
    if lease is None:
        return None
    try:
        t2l.loras.add(lease.stored)
    except BaseException:
        lease.release()
        raise
    return lease


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
            request = request.model_copy(update={"model": lease.name})  # a new request: vLLM's object is not changed
        response = await route.original(request, raw_request)
        if response is None:  # vLLM's with_cancellation: the client went away
            response = Response(status_code=499)
        elif t2l is not None and t2l.stopping.is_set() and response.status_code == HTTPStatus.INTERNAL_SERVER_ERROR:
            response = refuse(t2l, HTTPStatus.SERVICE_UNAVAILABLE, SHUTTING_DOWN)  # it met the stopped tokenizer
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
