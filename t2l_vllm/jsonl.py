"""JSON Lines input, with every problem located as `path:line` for the person fixing it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import T2LError


def read_jsonl(path: str | Path, error: type[T2LError]) -> list[tuple[str, Any]]:
    """(`path:line`, parsed value) for every non-blank line; raises `error` naming the spot."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise error(f"{path}: cannot read it: {err}") from err
    entries = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            entries.append((f"{path}:{number}", json.loads(line)))
        except json.JSONDecodeError as err:
            raise error(f"{path}:{number}: not valid JSON: {err}") from err
    if not entries:
        raise error(f"{path}: has no records.")
    return entries
