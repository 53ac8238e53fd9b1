"""Task descriptions: validation and the normal form that names an adapter.

Two descriptions that differ only in surrounding or repeated white space, or in
Unicode composition, are the same task and must share one cached adapter. A
request may also mix descriptions (`[{"description": ..., "weight": ...}, ...]`):
its normal form is the normalised descriptions with weights summing to 1.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import unicodedata
from dataclasses import dataclass
from typing import Any, Union

from .errors import InvalidDescriptionError

DEFAULT_MAX_DESCRIPTION_CHARS = 2048
MAX_MIX_PARTS = 8


@dataclass(frozen=True)
class DescriptionMix:
    """Normalised descriptions and their weights (two or more, summing to 1, sorted by text)."""

    parts: tuple[tuple[str, float], ...]

    def canonical(self) -> str:
        """The text that names the mix: the same for every spelling of the same normalised mix."""
        return json.dumps([[text, weight] for text, weight in self.parts], ensure_ascii=False, separators=(",", ":"))


NormalTask = Union[str, DescriptionMix]


def normalize_task(value: Any, max_chars: int = DEFAULT_MAX_DESCRIPTION_CHARS) -> NormalTask:
    """A description's normal form, or a mix's (a list of `{"description", "weight"}`); idempotent."""
    if isinstance(value, DescriptionMix):
        return value
    if isinstance(value, list):
        return normalize_mix(value, max_chars)
    return normalize_description(value, max_chars)


def normalize_mix(items: list, max_chars: int = DEFAULT_MAX_DESCRIPTION_CHARS) -> NormalTask:
    """Validates a mix and normalises it: weights summing to 1, zero weights and repeats folded.

    A mix whose weight all falls on one description is that description, so it
    names (and generates) exactly that description's adapter.
    """
    if not items:
        raise InvalidDescriptionError('a mix of task descriptions is empty; give a list of {"description": ..., "weight": ...}.')
    if len(items) > MAX_MIX_PARTS:
        raise InvalidDescriptionError(f"a mix may hold at most {MAX_MIX_PARTS} descriptions, got {len(items)}.")
    weights: dict[str, float] = {}
    for i, item in enumerate(items):
        if not isinstance(item, dict) or "description" not in item or set(item) - {"description", "weight"}:
            raise InvalidDescriptionError(f'item {i} of the mix must be {{"description": string, "weight": number}}, got {json.dumps(item)[:80]}.')
        try:
            text = normalize_description(item["description"], max_chars)
        except InvalidDescriptionError as err:
            raise InvalidDescriptionError(f"item {i} of the mix: {err}") from None
        weight = item.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
            raise InvalidDescriptionError(f"the weight of item {i} of the mix must be a finite number >= 0, got {json.dumps(weight)}.")
        weights[text] = weights.get(text, 0.0) + float(weight)
    total = sum(weights.values())
    if not total > 0 or not math.isfinite(total):
        raise InvalidDescriptionError("the weights of the mix must sum to more than 0 (and stay finite).")
    kept = sorted((text, round(w / total, 9)) for text, w in weights.items() if w > 0)
    if len(kept) == 1:
        return kept[0][0]
    return DescriptionMix(tuple(kept))


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


def adapter_key(normal: NormalTask, hypernet_fingerprint: str) -> str:
    """sha256 of the normalised description (or mix) and the hypernetwork's fingerprint (hex).

    A mix is hashed behind a 0xff byte, which no UTF-8 text holds, so no plain
    description can ever name a mix's adapter.
    """
    h = hashlib.sha256()
    h.update(hypernet_fingerprint.encode())
    if isinstance(normal, DescriptionMix):
        h.update(b"\xff")
        h.update(normal.canonical().encode("utf-8"))
    else:
        h.update(b"\0")
        h.update(normal.encode("utf-8"))
    return h.hexdigest()


def adapter_name(key: str) -> str:
    """The name vLLM sees: content-derived, so one name never means two sets of weights."""
    return f"t2l-{key[:24]}"


def generated_name(normal: NormalTask, hypernet_fingerprint: str) -> str:
    """The name of the adapter a hypernetwork generates for a normalised description or mix."""
    return adapter_name(adapter_key(normal, hypernet_fingerprint))


GENERATED_NAME = re.compile(r"^t2l-[0-9a-f]{24}$")  # every name `adapter_name` makes, and no other

# How a client that can set only `model` names a task: `t2l/<task>` for a listed task (a router library
# task, a preloaded description), `t2l:<percent-encoded description>` for any description.
CATALOG_PREFIX = "t2l/"
DESCRIPTION_MODEL_PREFIX = "t2l:"
_SLUG_WORDS = re.compile(r"[a-z0-9]+")


def catalog_id(name_or_description: str) -> str:
    """The model id of a listed task, stable and readable: `t2l/` + a router task's name as it is, or, for a
    free description, its words lowercased and joined by '-' (at most 48 characters) and 6 hex of its hash."""
    if re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name_or_description):
        return CATALOG_PREFIX + name_or_description
    slug = "-".join(_SLUG_WORDS.findall(name_or_description.lower()))[:48].strip("-") or "task"
    return f"{CATALOG_PREFIX}{slug}-{hashlib.sha256(name_or_description.encode()).hexdigest()[:6]}"


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
