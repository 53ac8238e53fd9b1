"""The playground: a page to try a description by hand, and the route behind it.

    GET  /t2l/playground  the page (`assets/playground.html`, no external assets): a description and
                          a message in, the base model's answer beside the adapted one out
    POST /t2l/adapter     {"task_description": ...} -> {name, generated, milliseconds, base_model,
                          nearest_tasks: [{task, score}, ...]}, through the adapter service

Both answers on the page come from the ordinary POST /v1/chat/completions, with and
without `task_description`, so the page shows what any client gets. Its hints are tasks
the served hypernetwork does: the `examples.json` in its checkpoint folder (`{"examples":
[{"description", "message", "answer"?}, ...]}`; the embedded default ships toy ones), else
generic ones. vLLM checks
`--api-key` only under /v1 and a few other prefixes, so these routes check it
themselves: a bearer token as vLLM checks it, or HTTP Basic with the key as password,
because a browser cannot send a bearer token when it navigates to a page. On by
default; `t2l-vllm serve --no-playground` leaves both routes out.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from functools import cache
from http import HTTPStatus
from importlib import resources
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from ..errors import T2LError
from ..service.settings import ServiceSettings
from .configured import plugin_settings
from .http import DESCRIPTION_FIELD, has_api_key, json_body, openai_error, refuse, refuse_for
from .state import T2LState

logger = logging.getLogger(__name__)

PAGE_PATH = "/t2l/playground"
ADAPTER_PATH = "/t2l/adapter"
NEAREST_TASKS = 5  # rows of the page's "nearest tasks" list
# The page needs nothing from elsewhere; the policy keeps it so and forbids framing it.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "Cache-Control": "no-store",
}
EXAMPLES_FILE = "examples.json"  # in a hypernetwork's checkpoint folder (default_model.py copies the embedded default's)
MAX_EXAMPLES = 12
# For a hypernetwork that says nothing of its tasks: what a real instruction-tuned base model does.
GENERIC_EXAMPLES = (
    {"description": "Summarise the text in one short sentence.",
     "message": "The meeting moved from Monday to Wednesday because the room was booked, and lunch is now at noon."},
    {"description": "Translate English text into French.", "message": "The cat sleeps on the warm windowsill."},
    {"description": "Classify the sentiment of a review as positive or negative.", "message": "The battery died after two days."},
)
EXAMPLES_SLOT = "[/* the examples, filled in by playground.py */]"


def attach_playground(app: FastAPI) -> None:
    """Adds the playground's routes unless `--no-playground` (or `playground: false`, or no t2l settings) says otherwise.

    vLLM puts the parsed options on `app.state.args` before endpoint plugins attach their routes.
    """
    args = getattr(app.state, "args", None)
    settings: ServiceSettings | None = plugin_settings(args) if args is not None else None
    if settings is None or not settings.playground:
        return
    router = APIRouter()
    router.add_api_route(PAGE_PATH, _page_endpoint(render_page(examples_for(settings.hypernet))), methods=["GET"], include_in_schema=False)
    router.add_api_route(ADAPTER_PATH, _adapter, methods=["POST"], include_in_schema=False)
    app.include_router(router)


@cache
def page_html() -> str:
    """The page as shipped, its examples not yet filled in (`render_page`)."""
    return resources.files("t2l_vllm").joinpath("assets/playground.html").read_text(encoding="utf-8")


def examples_for(hypernet: str) -> list[dict[str, str]]:
    """The hint tasks for a hypernetwork: its folder's `examples.json`, else `GENERIC_EXAMPLES`.

    A file that cannot be read, or holds no usable example, is logged and passed over: hints never stop a server.
    """
    path = Path(hypernet) / EXAMPLES_FILE
    if not path.is_file():
        return [dict(example) for example in GENERIC_EXAMPLES]
    try:
        examples = _checked_examples(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        logger.warning("t2l_vllm: the playground ignores %s: %s", path, err)
        return [dict(example) for example in GENERIC_EXAMPLES]
    return examples


def _checked_examples(doc: object) -> list[dict[str, str]]:
    """`{"examples": [{"description": str, "message": str, "answer": str (optional)}, ...]}`, at most MAX_EXAMPLES."""
    items = doc.get("examples") if isinstance(doc, dict) else None
    if not isinstance(items, list) or not items:
        raise ValueError('it must be a JSON object with a non-empty list `examples`.')
    examples = []
    for i, item in enumerate(items[:MAX_EXAMPLES]):
        if not isinstance(item, dict) or not all(isinstance(item.get(key), str) and item[key].strip() for key in ("description", "message")):
            raise ValueError(f"item {i} of `examples` must have the strings `description` and `message`, got {json.dumps(item)[:80]}.")
        if not isinstance(item.get("answer", ""), str):
            raise ValueError(f"the `answer` of item {i} of `examples` must be a string, got {json.dumps(item['answer'])[:40]}.")
        examples.append({key: item[key] for key in ("description", "message", "answer") if key in item})
    return examples


def render_page(examples: list[dict[str, str]]) -> str:
    """The page with its examples in (JSON in a data block; `<`, `>` and `&` escaped so no text can end the block)."""
    data = json.dumps(examples, ensure_ascii=False).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return page_html().replace(EXAMPLES_SLOT, data, 1)


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


def _page_endpoint(html: str):
    async def page(request: Request) -> Response:
        if not authorised(request):  # the browser asks for the key and retries
            return Response("The playground needs the server's API key: give it as the password.", HTTPStatus.UNAUTHORIZED.value,
                            headers={"WWW-Authenticate": 'Basic realm="t2l_vllm", charset="UTF-8"'}, media_type="text/plain")
        return HTMLResponse(html, headers=PAGE_HEADERS)

    return page


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
