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
