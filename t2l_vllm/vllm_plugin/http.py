"""The plugin's HTTP vocabulary: the request field, the response headers, errors as OpenAI shapes them, the API key.

Every answer the plugin gives itself (rather than vLLM's handlers) is made here,
so that a refused request looks like any OpenAI error: {"error": {message, type,
param, code}}, with a message a person can act on.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from fastapi import Request
from fastapi.responses import JSONResponse

from ..errors import AdapterCheckError, AdapterStoreError, GenerationError, InvalidDescriptionError, T2LError
from .internals import key_accepted

if TYPE_CHECKING:
    from .state import T2LState

DESCRIPTION_FIELD = "task_description"
ADAPTER_HEADER = "x-t2l-adapter"
SOURCE_HEADER = "x-t2l-source"
TASK_HEADER = "x-t2l-task"
SCORE_HEADER = "x-t2l-score"


def openai_error(status: HTTPStatus, message: str, param: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    """An error body shaped as OpenAI's (and vLLM's): {"error": {message, type, param, code}}."""
    kind = status.phrase.replace(" ", "")
    kind = kind if kind.endswith("Error") else kind + "Error"  # BadRequestError, InternalServerError
    body = {"error": {"message": message, "type": kind, "param": param, "code": status.value}}
    return JSONResponse(body, status_code=status.value, headers=headers)


def refuse(t2l: T2LState | None, status: HTTPStatus, message: str, param: str | None = None,
           headers: dict[str, str] | None = None) -> JSONResponse:
    """`openai_error`, counted in the plugin's metrics when it is serving."""
    if t2l is not None:
        t2l.metrics.request_errors.labels(status=str(status.value)).inc()
    return openai_error(status, message, param, headers)


def refuse_for(t2l: T2LState | None, err: T2LError, field: str = DESCRIPTION_FIELD) -> JSONResponse:
    """The answer to a request whose adapter could not be had (`answer_to`), with Retry-After when
    the adapter service is being restarted."""
    retry = getattr(err, "retry_after_s", None)
    return refuse(t2l, *answer_to(err, field), headers=None if retry is None else {"Retry-After": str(retry)})


# How each failure to get an adapter is answered: the first class that matches wins.
_ERROR_STATUS: tuple[tuple[type[T2LError], HTTPStatus, str | None], ...] = (
    (InvalidDescriptionError, HTTPStatus.BAD_REQUEST, DESCRIPTION_FIELD),
    (AdapterCheckError, HTTPStatus.UNPROCESSABLE_ENTITY, DESCRIPTION_FIELD),
    (GenerationError, HTTPStatus.INTERNAL_SERVER_ERROR, None),  # the pass failed: not the request's fault
    (AdapterStoreError, HTTPStatus.SERVICE_UNAVAILABLE, None),  # the disk is full: retry when space returns
    (T2LError, HTTPStatus.SERVICE_UNAVAILABLE, None),  # the adapter service gone, an id collision
)


def answer_to(err: T2LError, field: str = DESCRIPTION_FIELD) -> tuple[HTTPStatus, str, str | None]:
    """The status, message and `param` of the error answering a request whose adapter could not be had;
    `field`: where the request gave its description (the body field, a header, `model`)."""
    status, param = next((status, param) for cls, status, param in _ERROR_STATUS if isinstance(err, cls))
    message = f"`{field}`: {err}" if isinstance(err, InvalidDescriptionError) else str(err)
    return status, message, None if param is None else field


def has_api_key(request: Request) -> bool:
    """Whether the request carries a key `--api-key` accepts (True when no key is set).

    vLLM checks the key only under /v1, /v2, /inference and /cohere, so its /tokenize,
    /invocations, ... answer without one; the plugin's own answers on such routes are
    given only to a request with the key, by vLLM's own check (`internals.key_accepted`).
    """
    return key_accepted(request)


async def json_body(request: Request) -> tuple[Any, str | None]:
    """(the request's JSON body, None), or (None, why it is not JSON). The body stays cached on the
    request, so vLLM's handler can read it again."""
    try:
        return json.loads(await request.body()), None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        return None, f"the request body is not valid JSON: {err}"
