"""The data a router chooses from: tasks with descriptions and example queries, read from YAML.

A library also carries how the choice is made: the calibrated `threshold` (written
by `route fit`) and the `fallback` policy for queries that reach no task.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..errors import T2LError

Fallback = Literal["query", "base"]
FALLBACKS = ("query", "base")
STARTER_LIBRARY = Path(__file__).parent.parent / "assets" / "task_library.yaml"


class RouterConfigError(T2LError):
    """A task library or labelled file that cannot be used, with where and why."""


@dataclass(frozen=True)
class Task:
    name: str
    descriptions: tuple[str, ...]
    examples: tuple[str, ...]
    adapter: str | None = None  # a trained PEFT adapter's folder: routed queries are served by it, not a generated one


@dataclass(frozen=True)
class TaskLibrary:
    """The tasks a router can choose from, and how it decides."""

    tasks: tuple[Task, ...]
    threshold: float | None = None
    fallback: Fallback = "query"
    path: str = ""

    @classmethod
    def load(cls, path: str | Path) -> "TaskLibrary":
        """Reads and checks a library file; `starter` names the one shipped with t2l_vllm."""
        import yaml

        path = STARTER_LIBRARY if str(path) == "starter" else Path(path)
        try:
            doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as err:
            raise RouterConfigError(f"task library `{path}`: cannot read it: {err}") from err
        except yaml.YAMLError as err:
            raise RouterConfigError(f"task library `{path}`: not valid YAML: {err}") from err
        return cls.from_dict(doc, str(path))

    @classmethod
    def from_dict(cls, doc: Any, path: str = "<library>") -> "TaskLibrary":
        def fail(problem: str) -> RouterConfigError:
            return RouterConfigError(f"task library `{path}`: {problem}")

        if not isinstance(doc, dict):
            raise fail("the top level must be a mapping with a `tasks` list.")
        unknown = set(doc) - {"threshold", "fallback", "tasks"}
        if unknown:
            raise fail(f"unknown top-level field(s) {sorted(unknown)}; expected threshold, fallback, tasks.")
        threshold = doc.get("threshold")
        if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold)):
            raise fail(f"`threshold` must be a number, got {threshold!r}.")
        fallback = doc.get("fallback", "query")
        if fallback not in FALLBACKS:
            raise fail(f"`fallback` must be one of {FALLBACKS}, got {fallback!r}.")
        raw_tasks = doc.get("tasks")
        if not isinstance(raw_tasks, list) or not raw_tasks:
            raise fail("`tasks` must be a non-empty list.")
        tasks, seen = [], set()
        for i, raw in enumerate(raw_tasks):
            where = f"task #{i + 1}"
            if not isinstance(raw, dict):
                raise fail(f"{where} must be a mapping with name, descriptions and examples.")
            name = raw.get("name")
            if not isinstance(name, str) or not name.strip():
                raise fail(f"{where} has no `name` (a non-empty string).")
            where = f"task `{name}`"
            if name in seen:
                raise fail(f"{where} appears twice; task names must be unique.")
            seen.add(name)
            extra = set(raw) - {"name", "descriptions", "examples", "adapter"}
            if extra:
                raise fail(f"{where} has unknown field(s) {sorted(extra)}.")
            lists = {}
            for key in ("descriptions", "examples"):
                values = raw.get(key)
                if not isinstance(values, list) or not values:
                    raise fail(f"{where} needs `{key}`: a non-empty list of strings.")
                for j, value in enumerate(values):
                    if not isinstance(value, str):
                        raise fail(f"{where}: {key}[{j}] must be a string, got {type(value).__name__}.")
                    if not value.strip():
                        raise fail(f"{where}: {key}[{j}] is empty.")
                lists[key] = tuple(v.strip() for v in values)
            tasks.append(Task(name, lists["descriptions"], lists["examples"], _adapter_folder(raw.get("adapter"), path, fail, where)))
        return cls(tuple(tasks), None if threshold is None else float(threshold), fallback, path)

    def trained(self) -> dict[str, str]:
        """Task name -> trained adapter folder, for the tasks that name one."""
        return {task.name: task.adapter for task in self.tasks if task.adapter is not None}

    def entries(self) -> tuple[list[str], list[int]]:
        """Every description and example, with the index of the task it belongs to: what the index embeds."""
        texts, owners = [], []
        for i, task in enumerate(self.tasks):
            for text in (*task.descriptions, *task.examples):
                texts.append(text)
                owners.append(i)
        return texts, owners

    def task(self, name: str) -> Task:
        for task in self.tasks:
            if task.name == name:
                return task
        raise RouterConfigError(f"task library `{self.path}` has no task `{name}`.")

    def write_threshold(self, threshold: float, out: str | Path | None = None) -> Path:
        """Writes the library with `threshold` set, keeping the rest of the file as it is."""
        source = Path(self.path)
        text = source.read_text(encoding="utf-8")
        line = f"threshold: {threshold:.4f}"
        pattern = re.compile(r"^threshold:.*$", re.MULTILINE)
        text = pattern.sub(line, text, count=1) if pattern.search(text) else f"{line}\n{text}"
        target = Path(out) if out else source
        target.write_text(text, encoding="utf-8")
        return target


PEFT_FILES = ("adapter_config.json", "adapter_model.safetensors")


def _adapter_folder(value: Any, library_path: str, fail, where: str) -> str | None:
    """A task's `adapter:` as an absolute folder (relative to the library file), checked to hold a PEFT LoRA."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise fail(f"{where}: `adapter` must be the path of a PEFT adapter folder.")
    folder = Path(value).expanduser()
    if not folder.is_absolute():
        folder = Path(library_path).parent / folder
    missing = [name for name in PEFT_FILES if not (folder / name).is_file()]
    if missing:
        raise fail(f"{where}: `adapter` {folder} is not a PEFT adapter folder (missing {', '.join(missing)}).")
    return str(folder.resolve())
