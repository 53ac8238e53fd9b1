"""The toy world: exact task answers, descriptions, input constraints, splits and examples."""

from __future__ import annotations

import itertools
import json
import random
import re

import pytest

from t2l_vllm.train.toy_world import (
    HELDOUT_NEIGHBOURS,
    HELDOUT_TASKS,
    TASKS,
    TRAIN_TASKS,
    make_examples,
    random_input,
    split_descriptions,
    write_jsonl,
)


def _inputs(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [random_input(rng) for _ in range(n)]


@pytest.mark.parametrize(
    ("task", "text", "expected"),
    [
        ("reverse", "ab cd", "dc ba"),
        ("reverse", "hello", "olleh"),
        ("reverse", "abc de fgh", "hgf ed cba"),
        ("uppercase", "hello world", "HELLO WORLD"),
        ("uppercase", "a bc", "A BC"),
        ("sort_words", "pear apple", "apple pear"),
        ("sort_words", "dog cat bee ant", "ant bee cat dog"),
        ("sort_words", "b ab a", "a ab b"),
        ("reverse_words", "a b c", "c b a"),
        ("reverse_words", "hello big world", "world big hello"),
        ("reverse_words", "single", "single"),
    ],
)
def test_named_tasks_compute_the_spec(task: str, text: str, expected: str) -> None:
    assert TASKS[task].fn(text) == expected


def test_registry_has_enough_tasks_named_by_key() -> None:
    assert len(TASKS) >= 14
    assert {"reverse", "uppercase", "sort_words", "reverse_words"} <= set(TASKS)
    assert all(task.name == name for name, task in TASKS.items())


def test_descriptions_are_many_unique_and_not_shared() -> None:
    owner: dict[str, str] = {}
    for name, task in TASKS.items():
        normalized = [" ".join(d.lower().split()) for d in task.descriptions]
        assert len(set(normalized)) == len(normalized) >= 20, name
        for d in normalized:
            assert d not in owner, f"{name} shares {d!r} with {owner.get(d)}"
            owner[d] = name


def test_descriptions_do_not_name_tasks() -> None:
    """Task keys are internal: no description spells one as an identifier."""
    for task in TASKS.values():
        for d in task.descriptions:
            assert "_" not in d
            for other in TASKS:
                if "_" in other:
                    assert other not in d.lower()


def test_examples_quoted_in_descriptions_are_correct() -> None:
    for name, task in TASKS.items():
        examples = 0
        for d in task.descriptions:
            quoted = re.findall(r'"([^"]*)"', d)
            assert len(quoted) in (0, 2), d
            if quoted:
                assert task.fn(quoted[0]) == quoted[1], d
                examples += 1
        assert 0 < examples < len(task.descriptions) / 2, name


def test_random_inputs_obey_the_constraints() -> None:
    counts = set()
    for text in _inputs(2000, seed=1):
        words = text.split(" ")
        assert 1 <= len(words) <= 4
        assert len(text) <= 24
        assert all(1 <= len(w) <= 8 and w.isalpha() and w.isascii() and w.islower() for w in words)
        counts.add(len(words))
    assert counts == {1, 2, 3, 4}


def test_random_input_is_deterministic_per_seed() -> None:
    assert _inputs(50, seed=3) == _inputs(50, seed=3)
    assert _inputs(50, seed=3) != _inputs(50, seed=4)


def test_outputs_are_deterministic_short_and_nonempty() -> None:
    for text in _inputs(500, seed=2):
        for task in TASKS.values():
            out = task.fn(text)
            assert isinstance(out, str) and 0 < len(out) <= 48
            assert task.fn(text) == out


def test_every_pair_of_tasks_differs_on_most_inputs() -> None:
    inputs = _inputs(500, seed=5)
    outputs = {name: [task.fn(x) for x in inputs] for name, task in TASKS.items()}
    for a, b in itertools.combinations(TASKS, 2):
        differ = sum(x != y for x, y in zip(outputs[a], outputs[b]))
        assert differ >= 0.5 * len(inputs), (a, b, differ)


def test_task_split_is_disjoint_and_covers() -> None:
    assert set(TRAIN_TASKS).isdisjoint(HELDOUT_TASKS)
    assert set(TRAIN_TASKS) | set(HELDOUT_TASKS) == set(TASKS)
    assert len(TRAIN_TASKS) >= 10 and len(HELDOUT_TASKS) >= 3
    assert set(HELDOUT_NEIGHBOURS) == set(HELDOUT_TASKS)
    assert all(set(n) <= set(TRAIN_TASKS) for n in HELDOUT_NEIGHBOURS.values())


def test_description_split_is_fixed_disjoint_and_covers() -> None:
    for task in TASKS.values():
        seen, heldout = split_descriptions(task)
        assert len(heldout) == 5
        assert seen + heldout == task.descriptions
        assert set(seen).isdisjoint(heldout)
        assert split_descriptions(task) == (seen, heldout)
    seen, heldout = split_descriptions(TASKS["reverse"], n_heldout=3)
    assert len(heldout) == 3 and seen + heldout == TASKS["reverse"].descriptions
    with pytest.raises(ValueError):
        split_descriptions(TASKS["reverse"], n_heldout=0)


def test_make_examples_is_deterministic_balanced_and_exact() -> None:
    records = make_examples(TRAIN_TASKS, n=20, seed=7)
    assert records == make_examples(TRAIN_TASKS, n=20, seed=7)
    assert records != make_examples(TRAIN_TASKS, n=20, seed=8)
    assert len(records) == 20 * len(TRAIN_TASKS)
    assert [r["task"] for r in records[: len(TRAIN_TASKS)]] == list(TRAIN_TASKS)
    for r in records:
        task = TASKS[r["task"]]
        assert set(r) == {"task", "descriptions", "input", "output"}
        assert r["output"] == task.fn(r["input"])
        assert r["descriptions"] == list(split_descriptions(task)[0])


def test_write_jsonl_round_trips(tmp_path) -> None:
    records = make_examples(["reverse", "count_vowels"], n=3, seed=0)
    path = tmp_path / "sub" / "toy.jsonl"
    write_jsonl(path, records)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == records
