"""Wordings of toy tasks written by hand outside the templates: what a user types, not what `tasks.yaml` renders.

Two files, one format (a task's descriptions grouped by style: free sentences,
examples only, questions, terse notes, verbose explanations, typos):

- `independent_wordings.yaml`: the held-out tasks (`INDEPENDENT`), the
  reproduction's "held-out tasks, independent wordings" column. Only scored:
  nothing trains, tunes or selects on it.
- `dev_wordings.yaml`: some training tasks (`DEV`), "train tasks, independent
  wordings": written the same way, for judging a variant of the recipe while it
  is developed without looking at the held-out tasks' wordings.

Neither reaches a hypernetwork's or an encoder's training data (the tests check
the reproduction's written data against both).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from .world import HELDOUT_TASKS, TRAIN_TASKS

FOLDER = Path(__file__).resolve().parent
INDEPENDENT_FILE = FOLDER / "independent_wordings.yaml"
DEV_FILE = FOLDER / "dev_wordings.yaml"
EXAMPLE = re.compile(r"([a-z ]+?) -> ([A-Za-z ]+)")  # `input -> output`, several separated by ", "


@dataclass(frozen=True)
class Wording:
    task: str
    style: str
    text: str


def load_wordings(path: Path, section: str, allowed: tuple[str, ...]) -> tuple[Wording, ...]:
    """Every wording of the file's `section`, in file order; refuses tasks outside `allowed` and unknown styles."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    styles = tuple(data["styles"])
    unknown = sorted(set(data[section]) - set(allowed))
    if unknown:
        raise ValueError(f"{path}: {unknown} are not tasks this file may describe")
    out = []
    for task, by_style in data[section].items():
        bad = sorted(set(by_style) - set(styles))
        if bad:
            raise ValueError(f"{path}: `{task}` has unknown styles {bad}; known: {list(styles)}")
        out += [Wording(task, style, text) for style in styles for text in by_style.get(style, ())]
    return tuple(out)


def by_task(wordings: tuple[Wording, ...]) -> dict[str, tuple[str, ...]]:
    """Task -> its wordings' texts, in file order."""
    out: dict[str, list[str]] = {}
    for w in wordings:
        out.setdefault(w.task, []).append(w.text)
    return {task: tuple(texts) for task, texts in out.items()}


def examples_in(text: str) -> list[tuple[str, str]]:
    """The `input -> output` pairs a wording quotes."""
    return [(m.group(1).strip(), m.group(2).strip()) for m in EXAMPLE.finditer(text)]


INDEPENDENT: tuple[Wording, ...] = load_wordings(INDEPENDENT_FILE, "heldout", HELDOUT_TASKS)
DEV: tuple[Wording, ...] = load_wordings(DEV_FILE, "train", TRAIN_TASKS)


def style_of(wordings: tuple[Wording, ...]) -> Mapping[tuple[str, str], str]:
    """(task, text) -> style."""
    return {(w.task, w.text): w.style for w in wordings}

