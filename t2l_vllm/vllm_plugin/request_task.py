"""Where a request's task comes from, for every kind of client: the body, a header, or the model name.

In this order; the first present wins, and a task given twice is refused:

    body "task_description"                 clients that add a body field (the OpenAI SDK's extra_body)
    header X-T2L-Task-Description           gateways that forward headers but not unknown body fields
    model "t2l:<description>"               clients that can set only `model`; the text percent-encoded
    model "t2l/<task>"                      a task /v1/models lists (router library tasks, --preload)
    none of these                           the router, if the deployment has one, else the base model

The header and the `t2l:` form are percent-decoded (RFC 3986, UTF-8), so any text
travels in a header or a URL-safe model name; after decoding, a description is
checked exactly as the body field is (`descriptions.normalize_task`, by the
adapter service), and refused with the same 400, naming where it came from.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import unquote

from ..descriptions import CATALOG_PREFIX, DESCRIPTION_MODEL_PREFIX
from ..service.protocol import CatalogEntry
from .http import DESCRIPTION_FIELD

DESCRIPTION_HEADER = "x-t2l-task-description"
# Percent-encoding at most triples a text: a longer encoded form cannot decode to an acceptable description.
ENCODING_FACTOR = 3


@dataclass(frozen=True)
class RequestTask:
    """A request's task: a description (or mix) to make an adapter for, or a listed task's kept adapter."""

    description: object | None = None
    adapter: str | None = None  # a listed task's kept adapter, leased by name
    source: str = "none"  # request (the body field) | header | model | none

    @property
    def field(self) -> str:
        """Where the description came from, as an error message names it."""
        return {"request": DESCRIPTION_FIELD, "header": "X-T2L-Task-Description", "model": "model"}.get(self.source, DESCRIPTION_FIELD)

    @property
    def given(self) -> bool:
        return self.source != "none"


class RequestTaskError(ValueError):
    """A task given in a form that cannot be read, or given twice; answered with `status`."""

    def __init__(self, message: str, param: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST) -> None:
        super().__init__(message)
        self.message, self.param, self.status = message, param, status


def task_of(body: dict, headers: Mapping[str, str], catalog: Mapping[str, CatalogEntry], max_description_chars: int) -> RequestTask:
    """The request's task, by the precedence above; `task_description` is taken out of `body`."""
    model = body.get("model")
    named = model if isinstance(model, str) and model.startswith((DESCRIPTION_MODEL_PREFIX, CATALOG_PREFIX)) else None
    if DESCRIPTION_FIELD in body:
        description = body.pop(DESCRIPTION_FIELD)
        if description is None:
            raise RequestTaskError(f"`{DESCRIPTION_FIELD}` is null; give a string or leave the field out.", DESCRIPTION_FIELD)
        _not_twice(named, DESCRIPTION_FIELD)
        return RequestTask(description=description, source="request")
    header = headers.get(DESCRIPTION_HEADER)
    if header is not None:
        _not_twice(named, "X-T2L-Task-Description")
        return RequestTask(description=_decoded(header, "X-T2L-Task-Description", max_description_chars), source="header")
    if named is None:
        return RequestTask()
    if named.startswith(DESCRIPTION_MODEL_PREFIX):
        return RequestTask(description=_decoded(named[len(DESCRIPTION_MODEL_PREFIX):], "model", max_description_chars), source="model")
    entry = catalog.get(named)
    if entry is None:
        listed = ", ".join(sorted(catalog)[:8]) or "none: start the server with --router or --preload"
        raise RequestTaskError(f"The model `{named}` is no task this server lists; listed tasks (GET /v1/models): {listed}.",
                               "model", HTTPStatus.NOT_FOUND)
    return RequestTask(description=None if entry.adapter else entry.description, adapter=entry.adapter, source="model")


def _not_twice(named: str | None, where: str) -> None:
    if named is not None:
        raise RequestTaskError(f"the task is given twice: by `{where}` and by `model` (`{named[:80]}`); give it once, "
                               "and name the base model (or leave `model` out).", "model")


def _decoded(text: str, where: str, max_description_chars: int) -> str:
    """A percent-encoded description, decoded; the encoded form's length is bounded before decoding."""
    if len(text) > ENCODING_FACTOR * max_description_chars:
        raise RequestTaskError(f"`{where}`: the description is longer than {max_description_chars} characters "
                               f"(`max_description_chars`), even percent-encoded ({len(text)} characters).", where)
    try:
        return unquote(text, errors="strict")
    except UnicodeDecodeError as err:
        raise RequestTaskError(f"`{where}`: the percent-encoded description is not UTF-8 ({err.reason} at byte {err.start}).", where) from None
