"""Rendering the toy world's description templates into varied descriptions.

A template is filled for one task (see `toy/tasks.yaml` for the
syntax). Each rendering draws its choices (k as a digit or a word, one of the
`[a|b]` alternatives, one phrase per operation, the example input) from a
random stream seeded by the task's name and the template's text, so the
descriptions are the same on every machine and every run, and two tasks of a
family rendered from one template differ in more than their parameter.
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Callable, Mapping, Sequence

NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven"}
_ALTERNATIVES = re.compile(r"\[([^\[\]]*\|[^\[\]]*)\]")


def variation_stream(task: str, template: str) -> random.Random:
    """The random stream of one task's rendering of one template, seeded by their names (string seeds are
    stable across runs), so adding or moving a template changes no other rendering."""
    return random.Random(f"{task}/{template}")


def render(template: str, slots: Mapping[str, str], rng: random.Random) -> str:
    """Chooses one of every `[a|b]` group, then fills the `{slot}`s (a missing slot raises KeyError)."""
    chosen = _ALTERNATIVES.sub(lambda m: rng.choice(m.group(1).split("|")), template)
    names = [name for _, name, _, _ in string.Formatter().parse(chosen) if name]
    missing = sorted(set(names) - set(slots))
    if missing:
        raise KeyError(f"template {template!r} uses unknown slots {missing}")
    return chosen.format_map(slots)


def example_slots(rng: random.Random, inputs: Sequence[str], fn: Callable[[str], str]) -> dict[str, str]:
    """`{in}` and `{out}`: one of the example inputs that the task changes, and its exact output."""
    text = rng.choice([x for x in inputs if fn(x) != x])
    return {"in": text, "out": fn(text)}


def number_slots(k: int, rng: random.Random) -> dict[str, str]:
    """`{k}` (digit or word), `{k_}` (that and a space, nothing for 1) and `{s}` (plural ending)."""
    written = str(k) if rng.random() < 0.5 else NUMBER_WORDS[k]
    return {"k": written, "k_": "" if k == 1 else written + " ", "s": "" if k == 1 else "s"}


def capitalised(text: str) -> str:
    return text[:1].upper() + text[1:]
