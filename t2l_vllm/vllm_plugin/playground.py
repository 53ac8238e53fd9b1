"""The playground: a page to try a description by hand, and the route behind it.

    GET  /t2l/playground  the page (`assets/playground.html`, no external assets): a description and
                          a message in, the base model's answer beside the adapted one out
    POST /t2l/adapter     {"task_description": ...} -> {name, generated, milliseconds, base_model,
                          nearest_tasks: [{task, score}, ...]}, through the adapter service

Both answers on the page come from the ordinary POST /v1/chat/completions, with and
without `task_description`, so the page shows what any client gets. vLLM checks
`--api-key` only under /v1 and a few other prefixes, so these routes check it
themselves: a bearer token as vLLM checks it, or HTTP Basic with the key as password,
because a browser cannot send a bearer token when it navigates to a page. On by
default; `t2l-vllm serve --no-playground` leaves both routes out.
"""

from __future__ import annotations

import base64
import binascii
from functools import cache
from http import HTTPStatus
from importlib import resources

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from ..errors import T2LError
from ..service.settings import ServiceSettings
from .configured import plugin_settings
from .http import DESCRIPTION_FIELD, has_api_key, json_body, openai_error, refuse, refuse_for
from .state import T2LState

PAGE_PATH = "/t2l/playground"
ADAPTER_PATH = "/t2l/adapter"
NEAREST_TASKS = 5  # rows of the page's "nearest tasks" list
# The page needs nothing from elsewhere; the policy keeps it so and forbids framing it.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "Cache-Control": "no-store",
}


def attach_playground(app: FastAPI) -> None:
    """Adds the playground's routes unless `--no-playground` (or `playground: false`, or no t2l settings) says otherwise.

    vLLM puts the parsed options on `app.state.args` before endpoint plugins attach their routes.
    """
    args = getattr(app.state, "args", None)
    settings: ServiceSettings | None = plugin_settings(args) if args is not None else None
    if settings is None or not settings.playground:
        return
    router = APIRouter()
    router.add_api_route(PAGE_PATH, _page, methods=["GET"], include_in_schema=False)
    router.add_api_route(ADAPTER_PATH, _adapter, methods=["POST"], include_in_schema=False)
    app.include_router(router)


@cache
def page_html() -> str:
    return resources.files("t2l_vllm").joinpath("assets/playground.html").read_text(encoding="utf-8")


def authorised(request: Request) -> bool:
    """Whether the request carries a key `--api-key` accepts, as a bearer token or as the password of
    HTTP Basic auth (True when the server has no key). The comparison is vLLM's own."""
    if has_api_key(request):
        return True
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        _, _, password = base64.b64decode(credentials.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return False
    headers = [(k, v) for k, v in request.scope["headers"] if k != b"authorization"]
    as_bearer = Request({**request.scope, "headers": [*headers, (b"authorization", f"Bearer {password}".encode())]})
    return has_api_key(as_bearer)


async def _page(request: Request) -> Response:
    if not authorised(request):  # the browser asks for the key and retries
        return Response("The playground needs the server's API key: give it as the password.", HTTPStatus.UNAUTHORIZED.value,
                        headers={"WWW-Authenticate": 'Basic realm="t2l_vllm", charset="UTF-8"'}, media_type="text/plain")
    return HTMLResponse(page_html(), headers=PAGE_HEADERS)


async def _adapter(request: Request) -> Response:
    """The description's adapter (generated now, or found in the cache) and the router's nearest tasks.

    Checked before anything is made: the key, then the body; a bad description gets the same
    400 as a chat request carrying it, since both go through the adapter service's checks.
    """
    t2l: T2LState | None = getattr(request.app.state, "t2l", None)
    if not authorised(request):
        return openai_error(HTTPStatus.UNAUTHORIZED, "a missing or wrong API key; send `Authorization: Bearer KEY` with the server's `--api-key`.")
    body, problem = await json_body(request)
    if problem is not None:
        return refuse(t2l, HTTPStatus.BAD_REQUEST, problem)
    if not isinstance(body, dict) or DESCRIPTION_FIELD not in body:
        return refuse(t2l, HTTPStatus.BAD_REQUEST, f'the request body must be a JSON object with `{DESCRIPTION_FIELD}`.', DESCRIPTION_FIELD)
    if t2l is None:  # vLLM initialises the plugin's state before serving; kept as an answer, not a crash
        return openai_error(HTTPStatus.SERVICE_UNAVAILABLE, "the t2l_vllm plugin has not started its adapter service.")
    try:
        report = await t2l.adapters.report(body[DESCRIPTION_FIELD], NEAREST_TASKS)
    except T2LError as err:
        return refuse_for(t2l, err)
    return JSONResponse({
        "name": report.name,
        "generated": report.generated,
        "milliseconds": report.milliseconds,
        "base_model": t2l.models.model_name(),
        "nearest_tasks": [{"task": task, "score": score} for task, score in report.nearest_tasks],
    })
