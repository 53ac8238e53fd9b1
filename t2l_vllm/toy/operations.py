"""The toy world's exact operations: what every task computes, with no descriptions attached.

Each is a function of an input of 1 to 4 lowercase words separated by single
spaces. `OPERATIONS` are the operations that stand alone (one task each);
`FAMILIES` build an operation from a parameter k; a composition applies two
operations in turn (`compose`). Outputs are never longer than the input or a
few digits, so one answer always fits the decoding budget.
"""

from __future__ import annotations

from collections.abc import Callable

Operation = Callable[[str], str]
VOWELS = frozenset("aeiou")


def _alternate_case(text: str) -> str:
    """Capitals at even positions within each word: "hello world" -> "HeLlO WoRlD"."""
    return " ".join("".join(c.upper() if i % 2 == 0 else c for i, c in enumerate(word)) for word in text.split())


OPERATIONS: dict[str, Operation] = {
    "reverse": lambda text: text[::-1],
    "uppercase": str.upper,
    "sort_words": lambda text: " ".join(sorted(text.split())),
    "reverse_words": lambda text: " ".join(reversed(text.split())),
    "reverse_each_word": lambda text: " ".join(word[::-1] for word in text.split()),
    "alternate_case": _alternate_case,
    "first_word": lambda text: text.split()[0],
    "last_word": lambda text: text.split()[-1],
    "first_letters": lambda text: "".join(word[0] for word in text.split()),
    "last_letters": lambda text: "".join(word[-1] for word in text.split()),
    "count_words": lambda text: str(len(text.split())),
    "count_vowels": lambda text: str(sum(c in VOWELS for c in text)),
    "word_lengths": lambda text: " ".join(str(len(word)) for word in text.split()),
    "sort_letters": lambda text: "".join(sorted(text.replace(" ", ""))),
}


def _shift(k: int) -> Operation:
    """Every letter k places along the alphabet (negative: backwards), wrapping; spaces kept."""
    return lambda text: "".join(c if c == " " else chr((ord(c) - ord("a") + k) % 26 + ord("a")) for c in text)


def _per_word(transform: Callable[[str], str]) -> Operation:
    return lambda text: " ".join(transform(word) for word in text.split())


# k -> operation. A word shorter than k is kept whole (keep_*) or capitalised whole (upper_*).
FAMILIES: dict[str, Callable[[int], Operation]] = {
    "shift_forward": lambda k: _shift(k),
    "shift_backward": lambda k: _shift(-k),
    "keep_first": lambda k: _per_word(lambda word: word[:k]),
    "keep_last": lambda k: _per_word(lambda word: word[-k:]),
    "upper_first": lambda k: _per_word(lambda word: word[:k].upper() + word[k:]),
    "upper_last": lambda k: _per_word(lambda word: word[:-k] + word[-k:].upper()),
}


def compose(first: Operation, then: Operation) -> Operation:
    """`then` applied to the output of `first`."""
    return lambda text: then(first(text))
