"""Task descriptions: validation and the normal form that names an adapter.

Two descriptions that differ only in surrounding or repeated white space, or in
Unicode composition, are the same task and must share one cached adapter.
"""

from __future__ import annotations

import hashlib
import unicodedata
from typing import Any

from .errors import InvalidDescriptionError

DEFAULT_MAX_DESCRIPTION_CHARS = 2048


def normalize_description(text: Any, max_chars: int = DEFAULT_MAX_DESCRIPTION_CHARS) -> str:
    """Returns the normal form of a description, or raises `InvalidDescriptionError`.

    The normal form is NFC with runs of white space folded to one space and the
    ends stripped. The length limit applies to the normal form.
    """
    if not isinstance(text, str):
        raise InvalidDescriptionError(
            f"the task description must be a string, got {type(text).__name__}."
        )
    normal = " ".join(unicodedata.normalize("NFC", text).split())
    try:
        normal.encode("utf-8")
    except UnicodeEncodeError as err:
        raise InvalidDescriptionError(
            f"the task description is not valid Unicode text: {err.reason} at character {err.start}."
        ) from None
    if not normal:
        raise InvalidDescriptionError("the task description is empty; describe the task in words.")
    if len(normal) > max_chars:
        raise InvalidDescriptionError(
            f"the task description has {len(normal)} characters; the limit is {max_chars} "
            "(raise it with `--max-description-chars`)."
        )
    return normal


def adapter_key(normal_description: str, hypernet_fingerprint: str) -> str:
    """sha256 of the normalised description and the hypernetwork's fingerprint (hex)."""
    h = hashlib.sha256()
    h.update(hypernet_fingerprint.encode())
    h.update(b"\0")
    h.update(normal_description.encode("utf-8"))
    return h.hexdigest()


def adapter_name(key: str) -> str:
    """The name vLLM sees: content-derived, so one name never means two sets of weights."""
    return f"t2l-{key[:24]}"


AFFINITY_HEADER = "X-Session-ID"


def affinity_headers(description: object, max_chars: int = DEFAULT_MAX_DESCRIPTION_CHARS) -> dict[str, str]:
    """The header that keeps one description on one replica behind vLLM's router.

    `vllm-router --policy consistent_hash` hashes `X-Session-ID` to pick a replica;
    this key is the sha256 of the description's normal form, so every wording that
    names the same adapter lands on the replica that already holds it. Clients send
    it beside `task_description` (`extra_headers=` in the OpenAI SDK).
    """
    normal = normalize_description(description, max_chars)
    return {AFFINITY_HEADER: "t2l-" + hashlib.sha256(normal.encode("utf-8")).hexdigest()[:32]}


# vLLM's own counter numbers `--lora-modules` adapters from 1 up; content-derived ids
# start above any count it can reach, and stay below 2**63 (vLLM keeps ids in int64).
ADAPTER_ID_OFFSET = 2**32
ADAPTER_ID_BITS = 60


def adapter_int_id(name: str) -> int:
    """The integer id vLLM keys an adapter's slots and caches by, derived from its name.

    Every process, replica and restart computes the same id for the same adapter
    without talking to the others; ids handed out by a per-process counter would
    disagree as soon as two API servers feed one engine. Two names share an id
    with probability 2**-60 per pair; the store refuses such a pair rather than
    serve one adapter's weights under the other's name.
    """
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    return ADAPTER_ID_OFFSET + (int.from_bytes(digest[:8], "big") >> (64 - ADAPTER_ID_BITS))
