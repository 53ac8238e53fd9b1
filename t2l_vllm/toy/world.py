"""The toy world: synthetic text tasks with exact answers, built from parts that combine.

Every task maps an input of 1 to 4 lowercase words (letters only, at most 24
characters with spaces) to an output computed exactly (`toy.operations`), so
accuracy is exact match and needs no judge. The tasks and their descriptions
live in `toy/tasks.yaml`; the hypernetwork sees only descriptions, never
a task's name, so the names are internal keys.

Three kinds of task, 70 in all:

- 14 standalone operations (reverse, uppercase, sort_words, ...), with 22
  hand-written descriptions each: the original toy world, whose 15th task,
  capitalize_words, is now `upper_first` with k = 1;
- 38 members of 6 families with a parameter k (shift letters k = 1..7 places
  forward or backward, keep the first or last k = 1..6 letters of each word,
  capitalise the first or last k = 1..6 letters of each word);
- 18 two-step compositions, a full grid: one of 9 operations that reorder or
  select (reverse, sort_words, reverse_words, reverse_each_word, sort_letters,
  first_letters, last_letters, first_word, last_word), then one of 2 that change
  case (uppercase, alternate_case), so that each second step is seen after
  many first steps and is read from its own phrase.

Each task is named to the base model by a cue of two parts (`ToyTask.cue`):
(operation, none), (family, k) or (first, then). The base model is given a
task as the sum of its two parts' learnt vectors, added to its first layer's
attention value at `<s>` (`toy.base`), so a task is a combination of parts
other tasks share, and an adapter can write the cue of any combination.

The split (`HELDOUT_TASKS`, fixed in the data file) holds out one k from the
inside of each family's range and two compositions: 8 tasks, each a new
combination of parts that training tasks use, so a hypernetwork can reach one
only by composing what it learnt. The base model learns every task (it is the "pretrained model" whose
skills an adapter elicits); the hypernetwork's training data holds only
training tasks and the descriptions rendered from their family's training
templates (`split_descriptions`), so no held-out task's description or cue
reaches it. The wording split is by template, not by position: each family and
the compositions name 5 `heldout_templates` that no training description is
rendered from, and every task's held-out descriptions come from them, so a
held-out task's held-out descriptions are an unseen task in an unseen wording.
`ToyTask.templates` keeps the template behind every rendered description, for
the tests that check it.
"""

from __future__ import annotations

import itertools
import json
import random
import string
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .descriptions import capitalised, example_slots, number_slots, render, variation_stream
from .operations import FAMILIES, OPERATIONS, Operation, compose

TASK_FILE = Path(__file__).resolve().parent / "tasks.yaml"
MAX_WORDS = 4
MAX_WORD_LETTERS = 8
MAX_INPUT_CHARS = 24
HELDOUT_DESCRIPTIONS = 5
TEXT_CHARS = string.ascii_letters + string.digits + " \n"  # every character of a prompt (input + newline) or an answer
NO_PARAMETER = "none"
SINGLE = "single operation"
TWO_STEPS = "two steps"


@dataclass(frozen=True)
class ToyTask:
    """A task: its internal name, exact function, descriptions, cue parts and family.

    `family` groups tasks for plots: the family's member name (e.g.
    `shift_forward`), `TWO_STEPS` for compositions, `SINGLE` for standalone tasks.
    """

    name: str
    fn: Operation
    descriptions: tuple[str, ...]
    cue: tuple[str, str]
    family: str
    templates: tuple[str, ...] = ()  # the template of each description (rendered tasks); empty for hand-written ones


def _load(path: Path) -> tuple[dict[str, ToyTask], tuple[str, ...]]:
    """Every task of the data file, and the held-out names (checked to be tasks)."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    examples = data["example_inputs"]
    tasks = [
        ToyTask(name, OPERATIONS[name], tuple(descriptions), (name, NO_PARAMETER), SINGLE)
        for name, descriptions in data["standalone"].items()
    ]
    for family, group in data["families"].items():
        templates = _templates(group, f"{path}: family `{family}`")
        for member, spec in group["members"].items():
            tasks += [_family_task(member, k, spec, templates, examples) for k in spec["k"]]
    comps = data["compositions"]
    templates = _templates(comps, f"{path}: compositions")
    for first, then in itertools.product(comps["first"], comps["then"]):
        tasks.append(_composition(first, then, comps, templates, examples))
    by_name = {task.name: task for task in tasks}
    if len(by_name) != len(tasks):
        raise ValueError(f"{path}: two tasks share a name")
    unknown = sorted(set(data["heldout"]) - set(by_name))
    if unknown:
        raise ValueError(f"{path}: held-out tasks {unknown} are not tasks")
    return by_name, tuple(data["heldout"])


def _templates(spec: Mapping[str, Any], where: str) -> tuple[str, ...]:
    """A family's (or the compositions') templates: the training ones, then its `HELDOUT_DESCRIPTIONS` held-out ones."""
    train, held = list(spec["templates"]), list(spec["heldout_templates"])
    if len(held) != HELDOUT_DESCRIPTIONS:
        raise ValueError(f"{where} has {len(held)} held-out templates; every family holds out {HELDOUT_DESCRIPTIONS}")
    if len(set(train + held)) != len(train) + len(held):
        raise ValueError(f"{where} lists a template twice")
    return tuple(train + held)


def _rendered(name: str, templates: Sequence[str], slots: Callable[[random.Random], dict[str, str]]) -> tuple[str, ...]:
    """One description per template, each from its own random stream (task and template text)."""
    out = []
    for template in templates:
        rng = variation_stream(name, template)
        out.append(render(template, slots(rng), rng))
    return tuple(out)


def _family_task(member: str, k: int, spec: Mapping[str, Any], templates: Sequence[str], examples: Sequence[str]) -> ToyTask:
    fn = FAMILIES[member](k)
    named = spec.get("named", {}).get(k)
    if named:
        return ToyTask(named["name"], fn, tuple(named["descriptions"]), (member, f"k{k}"), member)
    name = f"{member}_{k}"
    descriptions = _rendered(name, templates, lambda rng: {**spec["words"], **number_slots(k, rng), **example_slots(rng, examples, fn)})
    return ToyTask(name, fn, descriptions, (member, f"k{k}"), member, tuple(templates))


def _composition(first: str, then: str, spec: Mapping[str, Any], templates: Sequence[str], examples: Sequence[str]) -> ToyTask:
    name = f"{first}_then_{then}"
    fn = compose(OPERATIONS[first], OPERATIONS[then])

    def slots(rng: random.Random) -> dict[str, str]:
        first_phrase, then_phrase = rng.choice(spec["phrases"][first]), rng.choice(spec["phrases"][then])
        return {"first": first_phrase, "First": capitalised(first_phrase), "then": then_phrase, **example_slots(rng, examples, fn)}

    return ToyTask(name, fn, _rendered(name, templates, slots), (first, then), TWO_STEPS, tuple(templates))


TASKS, HELDOUT_TASKS = _load(TASK_FILE)
TRAIN_TASKS: tuple[str, ...] = tuple(name for name in TASKS if name not in HELDOUT_TASKS)
CUE_PARTS: tuple[str, ...] = tuple(sorted({part for task in TASKS.values() for part in task.cue}))


def neighbours(task: str) -> tuple[str, ...]:
    """The training tasks that share a cue part with `task` (other than `NO_PARAMETER`)."""
    parts = set(TASKS[task].cue) - {NO_PARAMETER}
    return tuple(t for t in TRAIN_TASKS if t != task and parts & set(TASKS[t].cue))


def random_input(rng: random.Random) -> str:
    """1 to 4 random lowercase words of 1 to 8 letters, at most 24 characters with spaces.

    Letters are uniform rather than drawn from a vocabulary, so a model cannot
    answer from memorised words and every task's output depends on the input.
    """
    n_words = rng.randint(1, MAX_WORDS)
    while True:
        lengths = [rng.randint(1, MAX_WORD_LETTERS) for _ in range(n_words)]
        if sum(lengths) + n_words - 1 <= MAX_INPUT_CHARS:
            break
    return " ".join("".join(rng.choice(string.ascii_lowercase) for _ in range(n)) for n in lengths)


def telling_inputs(task: str, others: Iterable[str], n: int, rng: random.Random) -> list[str]:
    """`n` random inputs on which `task`'s answer differs from every task in `others`.

    Scoring a held-out task on these means no credit comes from doing another
    task instead (on one-word inputs, for instance, many tasks agree).
    """
    fns = [TASKS[o].fn for o in others if o != task]
    inputs: list[str] = []
    for _ in range(1000 * n):
        text = random_input(rng)
        answer = TASKS[task].fn(text)
        if all(fn(text) != answer for fn in fns):
            inputs.append(text)
            if len(inputs) == n:
                return inputs
    raise ValueError(f"`{task}` differs from the other tasks too rarely to find {n} telling inputs")


def split_descriptions(task: ToyTask, n_heldout: int = HELDOUT_DESCRIPTIONS) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(seen, held-out) descriptions: the last `n_heldout`, fixed by the data file.

    For rendered tasks the last `HELDOUT_DESCRIPTIONS` are their family's
    `heldout_templates` (`_templates` puts them last), so with the default
    `n_heldout` no task of a family is seen in training in a held-out template.
    """
    if not 0 < n_heldout < len(task.descriptions):
        raise ValueError(f"n_heldout must be between 1 and {len(task.descriptions) - 1}, got {n_heldout}")
    return task.descriptions[:-n_heldout], task.descriptions[-n_heldout:]


def make_examples(task_names: Iterable[str], n: int, seed: int) -> list[dict]:
    """`n` records per task, interleaved task by task so that any prefix is balanced.

    Each record carries the task's seen descriptions (the trainer picks one per
    step), the input, and the exact output. The same seed gives the same records.
    """
    tasks = [TASKS[name] for name in task_names]
    seen = {task.name: split_descriptions(task)[0] for task in tasks}
    rng = random.Random(seed)
    records = []
    for _ in range(n):
        for task in tasks:
            text = random_input(rng)
            records.append(
                {"task": task.name, "descriptions": list(seen[task.name]), "input": text, "output": task.fn(text)}
            )
    return records


def write_jsonl(path: str | Path, records: Iterable[dict]) -> None:
    """Writes one JSON object a line, the format `t2l-vllm train sft` reads."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
