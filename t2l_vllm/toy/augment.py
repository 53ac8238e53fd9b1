"""Rewriting a toy task's description so that its surface changes and its task does not.

For the encoder tuning and the SFT data (`toy.reproduction`, `Budget.augment`):
a description of the training data becomes another description of the same
task, by any of

- synonyms from a small hand list (`SYNONYMS`: groups of words or phrases that
  mean the same in every toy description, e.g. "letter"/"character"; a number
  written as a digit or a word);
- dropping words that carry no task (`FILLER`: articles, "please", "just", ...);
- word order: two clauses of the description swapped around a comma or a
  semicolon (the toy world's compositions are told apart by their operations,
  never by their order: each first step reorders or selects, each second step
  changes case);
- typos: a letter dropped, doubled or swapped with its neighbour in a few words
  of 4 or more letters (numbers are never touched);
- the example added: the task's exact output on one of the world's example
  inputs, in one of a few forms.

Every operation keeps the words that name the task (numbers, directions,
first/last, the operations' own verbs are only ever replaced by a synonym of
the same meaning), so the rewritten description still describes its task. The
word lists were written for the training descriptions' vocabulary, after the
independent wordings (`independent_wordings.yaml`) were: so that they cannot
carry those wordings into training, they add no word to the training
vocabulary that the independent wordings use (tested).
"""

from __future__ import annotations

import random
import re

import yaml

from .descriptions import NUMBER_WORDS
from .world import TASK_FILE, TASKS

# Each group: words or phrases interchangeable in every toy description where one of them stands as a whole word.
SYNONYMS: tuple[tuple[str, ...], ...] = (
    ("letter", "character"),
    ("letters", "characters"),
    ("each", "every"),
    ("place", "position", "spot"),
    ("places", "positions", "spots"),
    ("shift", "move", "slide"),
    ("forward", "forwards"),
    ("backward", "back"),
    ("keep", "retain", "leave"),
    ("first", "leading", "opening", "initial"),
    ("last", "final", "closing", "trailing", "ending"),
    ("start", "beginning", "front"),
    ("end", "finish"),
    ("capitalize", "uppercase", "upper-case"),
    ("capitals", "capital letters", "upper case", "caps"),
    ("lowercase", "lower case", "small letters"),
    ("reverse", "flip", "invert"),
    ("sort", "arrange"),
    ("alphabetically", "in alphabetical order", "from a to z"),
    ("then", "after that", "afterwards", "next"),
    ("text", "input", "phrase", "string"),
    ("output", "write", "return", "give"),
    ("make", "turn"),
    ("cut", "trim", "shorten", "truncate"),
    ("join", "concatenate", "glue together"),
    ("remove", "drop", "delete"),
)
FILLER = frozenset({"the", "a", "an", "please", "just", "so", "that", "of", "to", "in", "it", "its", "them", "all", "and", "can", "you"})
SENTENCE_WORDS = frozenset({"first", "last", "then"})  # capitalised at the start of a sentence they order steps: kept there
EXAMPLE_FORMS = ('{text}, e.g. "{x}" -> "{y}"', '{text} ("{x}" gives "{y}")', '{text} Example: {x} -> {y}', '{x} -> {y}: {text}')
EXAMPLE_INPUTS: tuple[str, ...] = tuple(yaml.safe_load(TASK_FILE.read_text(encoding="utf-8"))["example_inputs"])  # the templates' own

_WORD = re.compile(r"[A-Za-z][A-Za-z-]*|\d+")
_GROUP_OF = {word: group for group in SYNONYMS for word in group}
_DIGIT_OF = {word: str(k) for k, word in NUMBER_WORDS.items()}
_PHRASES = sorted((p for p in _GROUP_OF if " " in p), key=len, reverse=True)  # multi-word members, longest first


def synonyms(text: str, rng: random.Random, p: float = 0.35) -> str:
    """Each word of a `SYNONYMS` group replaced by another of its group with probability `p`; numbers
    switch between digit and word with the same probability."""
    for phrase in _PHRASES:  # a multi-word member stands for its group as a whole
        text = re.sub(rf"\b{re.escape(phrase)}\b", lambda m: _swap(m.group(0), rng, p), text)

    def one(m: re.Match) -> str:
        word = m.group(0)
        lower = word.lower()
        if lower.isdigit() and int(lower) in NUMBER_WORDS and rng.random() < p:
            return NUMBER_WORDS[int(lower)]
        if lower in _DIGIT_OF and rng.random() < p:
            return _DIGIT_OF[lower]
        if lower in SENTENCE_WORDS and word[:1].isupper():
            return word
        return _swap(word, rng, p) if lower in _GROUP_OF else word

    text = re.sub(r"\b([Ee]very) other\b", r"\1-other", text)  # "every other letter" is not "each other letter"
    return _WORD.sub(one, text).replace("very-other", "very other")


def _swap(word: str, rng: random.Random, p: float) -> str:
    group = _GROUP_OF.get(word.lower())
    if group is None or rng.random() >= p:
        return word
    new = rng.choice([w for w in group if w != word.lower()])
    return new[:1].upper() + new[1:] if word[:1].isupper() else new


def drop_filler(text: str, rng: random.Random, p: float = 0.5) -> str:
    """Each `FILLER` word dropped with probability `p` (the task's words stay)."""
    kept = [w for w in text.split(" ") if not (w.lower().strip(",.;:?!") in FILLER and w[-1:].isalpha() and rng.random() < p)]
    return " ".join(kept) if kept else text


def swap_clauses(text: str, rng: random.Random) -> str:
    """Two clauses around a comma or a semicolon swapped (the text as it was when it has one clause)."""
    body = text.rstrip(".?!")
    parts = re.split(r"(?<=[a-z0-9]),\s+|;\s+", body)
    if len(parts) < 2 or '"' in body:
        return text
    parts = [part[:1].lower() + part[1:] for part in parts]
    i = rng.randrange(len(parts) - 1)
    parts[i], parts[i + 1] = parts[i + 1], parts[i]
    out = ", ".join(parts)
    return out[:1].upper() + out[1:] + text[len(body):]


def typos(text: str, rng: random.Random, p: float = 0.25) -> str:
    """In each word of 4 or more letters, with probability `p`, a letter dropped, doubled or swapped with the next one."""

    def one(m: re.Match) -> str:
        word = m.group(0)
        if len(word) < 4 or not word.isalpha() or rng.random() >= p:
            return word
        i = rng.randrange(1, len(word) - 1)
        kind = rng.randrange(3)
        if kind == 0:
            return word[:i] + word[i + 1 :]
        if kind == 1:
            return word[:i] + word[i] + word[i:]
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]

    return _WORD.sub(one, text)


def add_example(task: str, text: str, rng: random.Random) -> str:
    """The description with the task's exact output on one example input it changes, in one of `EXAMPLE_FORMS`
    (as it was if the task changes none)."""
    fn = TASKS[task].fn
    changed = [x for x in EXAMPLE_INPUTS if fn(x) != x]
    if not changed:
        return text
    x = rng.choice(changed)
    return rng.choice(EXAMPLE_FORMS).format(text=text.rstrip(" ."), x=x, y=fn(x))


def augment(task: str, text: str, rng: random.Random, p: float = 0.5) -> str:
    """`text` rewritten by each operation in turn with probability `p` (synonyms, filler dropped, clauses
    swapped, typos, the example added), so that the rewritten text describes `task` as `text` did."""
    if rng.random() < p:
        text = synonyms(text, rng)
    if rng.random() < p:
        text = drop_filler(text, rng)
    if rng.random() < p / 2:
        text = swap_clauses(text, rng)
    if rng.random() < p / 2:
        text = typos(text, rng)
    if rng.random() < p / 4 and '"' not in text and "->" not in text:
        text = add_example(task, text, rng)
    return text


def variants(task: str, text: str, n: int, seed: int = 0) -> list[str]:
    """`n` distinct rewritings of `text` (fewer when the operations find no more), each differing from
    `text`, from a random stream seeded by the task, the text and `seed`: the same on every run."""
    rng = random.Random(f"{task}/{text}/{seed}")
    out: dict[str, None] = {}
    for _ in range(20 * n):
        new = augment(task, text, rng)
        if new != text:
            out[new] = None
            if len(out) == n:
                break
    return list(out)
