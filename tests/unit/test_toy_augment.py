"""Rewriting descriptions (`toy.augment`): the surface changes, the words that name the task stay, and it is deterministic."""

from __future__ import annotations

import random
import re

from t2l_vllm.toy import augment
from t2l_vllm.toy.descriptions import NUMBER_WORDS
from t2l_vllm.toy.world import TASKS, TRAIN_TASKS, split_descriptions

DIGITS = {str(k): k for k in NUMBER_WORDS} | {w: k for k, w in NUMBER_WORDS.items()}


def _numbers(text: str) -> list[int]:
    return [DIGITS[w] for w in re.findall(r"[a-z]+|\d+", text.lower()) if w in DIGITS]


def test_variants_are_distinct_new_and_the_same_on_every_run() -> None:
    for task in ("shift_forward_3", "keep_last_4", "reverse_then_uppercase", "count_vowels"):
        for d in split_descriptions(TASKS[task])[0][:4]:
            out = augment.variants(task, d, 4)
            assert out == augment.variants(task, d, 4)
            assert len(set(out)) == len(out) and d not in out and out


def test_synonyms_keep_the_parameter_and_the_direction() -> None:
    rng = random.Random(0)
    for task in ("shift_forward_2", "shift_backward_5", "keep_first_4", "upper_last_3"):
        for d in split_descriptions(TASKS[task])[0]:
            new = augment.synonyms(d, rng, p=1.0)
            assert _numbers(new) == _numbers(d), (d, new)  # a digit may become its word, never another number
            for word, others in (("forward", ("forward", "forwards")), ("backward", ("backward", "back"))):
                if re.search(rf"\b{word}\b", d):
                    assert any(re.search(rf"\b{o}\b", new) for o in others), (d, new)


def test_every_other_is_not_each_other() -> None:
    assert "every other" in augment.synonyms("Make every other letter a capital.", random.Random(0), p=1.0)


def test_an_added_example_is_the_tasks_exact_output() -> None:
    rng = random.Random(1)
    for task in TRAIN_TASKS:
        text = augment.add_example(task, "Do it.", rng)
        (x, y), = re.findall(r'"?([a-z ]+)"? (?:->|gives) "?([^"]+?)"?(?:\)|:|$)', text)
        assert TASKS[task].fn(x.strip()) == y.strip(), text


def test_typos_and_dropped_words_never_touch_numbers() -> None:
    rng = random.Random(2)
    text = "Shift every letter 3 places forward in the alphabet."
    for _ in range(50):
        assert "3" in augment.typos(text, rng, p=1.0) and "3" in augment.drop_filler(text, rng, p=1.0)
    assert augment.drop_filler("the a", rng, p=1.0) == "the a"  # nothing left: the text as it was


def test_the_word_lists_add_no_word_of_the_independent_wordings_to_the_training_vocabulary() -> None:
    """The lists were written after the independent wordings: they may only move words the templates already use,
    or add words those wordings never use, so they cannot carry the wordings into training."""
    from t2l_vllm.toy.wordings import DEV, INDEPENDENT

    def words(text: str) -> set[str]:
        return set(re.findall(r"[a-z]+", text.lower()))

    templates = {w for task in TASKS.values() for d in task.descriptions for w in words(d)}
    written = {w for wording in (*INDEPENDENT, *DEV) for w in words(wording.text)}
    lists = {w for group in augment.SYNONYMS for phrase in group for w in words(phrase)} | set(augment.FILLER)
    lists |= {w for form in augment.EXAMPLE_FORMS for w in words(form.replace("{text}", "").replace("{x}", "").replace("{y}", ""))}
    assert not (lists - templates) & written
