"""The toy world: exact task answers, descriptions, input constraints, the split and its honesty, examples."""

from __future__ import annotations

import itertools
import json
import random
import re

import pytest
import yaml

from t2l_vllm.toy.world import (
    CUE_PARTS,
    HELDOUT_TASKS,
    NO_PARAMETER,
    SINGLE,
    TASK_FILE,
    TASKS,
    TEXT_CHARS,
    TRAIN_TASKS,
    TWO_STEPS,
    make_examples,
    neighbours,
    random_input,
    split_descriptions,
    telling_inputs,
    write_jsonl,
)

ORIGINAL_TASKS = {
    "reverse", "uppercase", "sort_words", "reverse_words", "reverse_each_word", "capitalize_words", "alternate_case", "first_word",
    "last_word", "first_letters", "last_letters", "count_words", "count_vowels", "word_lengths", "sort_letters",
}


def _inputs(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [random_input(rng) for _ in range(n)]


@pytest.mark.parametrize(
    ("task", "text", "expected"),
    [
        ("reverse", "ab cd", "dc ba"),
        ("uppercase", "hello world", "HELLO WORLD"),
        ("sort_words", "b ab a", "a ab b"),
        ("reverse_words", "hello big world", "world big hello"),
        ("capitalize_words", "big red dog", "Big Red Dog"),
        ("shift_forward_1", "abz yz", "bca za"),
        ("shift_backward_4", "abe", "wxa"),
        ("keep_first_3", "hello ab world", "hel ab wor"),
        ("keep_last_5", "wonderful day", "erful day"),
        ("upper_first_2", "hello a", "HEllo A"),
        ("upper_last_3", "hello ab", "heLLO AB"),
        ("reverse_then_alternate_case", "ab cde", "EdC Ba"),
        ("sort_words_then_uppercase", "pear apple", "APPLE PEAR"),
    ],
)
def test_tasks_compute_the_spec(task: str, text: str, expected: str) -> None:
    assert TASKS[task].fn(text) == expected


def test_the_world_keeps_the_original_tasks_and_adds_families_and_compositions() -> None:
    assert ORIGINAL_TASKS <= set(TASKS) and len(TASKS) >= 45
    assert all(task.name == name for name, task in TASKS.items())
    families = {task.family for task in TASKS.values()}
    assert {SINGLE, TWO_STEPS, "shift_forward", "shift_backward", "keep_first", "keep_last", "upper_first", "upper_last"} == families


def test_descriptions_are_many_unique_and_not_shared() -> None:
    owner: dict[str, str] = {}
    for name, task in TASKS.items():
        normalized = [" ".join(d.lower().split()) for d in task.descriptions]
        assert len(set(normalized)) == len(normalized) >= 20, name
        for d in normalized:
            assert d not in owner, f"{name} shares {d!r} with {owner.get(d)}"
            owner[d] = name


def test_a_rendered_task_takes_each_description_from_its_own_template() -> None:
    data = yaml.safe_load(TASK_FILE.read_text())
    templates = {member: group["templates"] + group["heldout_templates"] for group in data["families"].values() for member in group["members"]}
    templates[TWO_STEPS] = data["compositions"]["templates"] + data["compositions"]["heldout_templates"]
    for name, task in TASKS.items():
        if task.family in templates and name != "capitalize_words":
            assert len(task.descriptions) == len(templates[task.family]), name
            assert list(task.templates) == templates[task.family], name
            assert all("{" not in d and "[" not in d for d in task.descriptions), name


def _template_groups() -> list[tuple[str, list[str], list[str]]]:
    data = yaml.safe_load(TASK_FILE.read_text())
    groups = [(family, g["templates"], g["heldout_templates"]) for family, g in data["families"].items()]
    return groups + [("compositions", data["compositions"]["templates"], data["compositions"]["heldout_templates"])]


def _skeleton(template: str) -> str:
    """A template's fixed words: slots and alternatives removed, lower case."""
    return " ".join(re.sub(r"\{[^}]*\}|\[[^\]]*\]|[^a-z ]", " ", template.lower()).split())


def test_every_family_holds_out_whole_templates_that_differ_from_its_training_ones() -> None:
    for family, train, held in _template_groups():
        assert len(held) == 5 and len(train) >= 17, family
        assert set(held).isdisjoint(train), family
        assert {_skeleton(t) for t in held}.isdisjoint(_skeleton(t) for t in train), family


def test_held_out_descriptions_are_exactly_the_held_out_templates_renderings() -> None:
    """The wording split is by template: every rendered task's seen descriptions come from training
    templates only, its held-out ones from the held-out templates only, whatever the task."""
    held_templates = {t for _, _, held in _template_groups() for t in held}
    for name, task in TASKS.items():
        if not task.templates:
            continue
        seen, heldout = split_descriptions(task)
        by_text = dict(zip(task.descriptions, task.templates))
        assert {by_text[d] for d in heldout} <= held_templates, name
        assert held_templates.isdisjoint(by_text[d] for d in seen), name


def test_no_training_record_is_rendered_from_a_held_out_template() -> None:
    held_templates = {t for _, _, held in _template_groups() for t in held}
    template_of = {d: t for task in TASKS.values() for d, t in zip(task.descriptions, task.templates)}
    for r in make_examples(TRAIN_TASKS, n=1, seed=0):
        assert held_templates.isdisjoint(template_of[d] for d in r["descriptions"] if d in template_of), r["task"]


def test_descriptions_do_not_name_tasks() -> None:
    """Task keys are internal: no description spells one as an identifier."""
    for task in TASKS.values():
        for d in task.descriptions:
            assert "_" not in d
            for other in TASKS:
                if "_" in other:
                    assert other not in d.lower()


def test_examples_quoted_in_descriptions_are_correct_and_telling() -> None:
    for name, task in TASKS.items():
        examples = 0
        for d in task.descriptions:
            quoted = re.findall(r'"([^"]*)"', d)
            assert len(quoted) in (0, 2), d
            if quoted:
                assert task.fn(quoted[0]) == quoted[1] != quoted[0], d
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
            assert isinstance(out, str) and 0 < len(out) <= 24
            assert task.fn(text) == out


def test_prompts_and_answers_are_written_in_the_text_characters() -> None:
    """`TEXT_CHARS` is what a cue adapter must leave untouched (`toy.base.bos_reader`)."""
    for text in _inputs(200, seed=3):
        for task in TASKS.values():
            assert set(text + "\n" + task.fn(text)) <= set(TEXT_CHARS), task.name


def test_every_pair_of_tasks_differs_on_most_inputs() -> None:
    inputs = _inputs(500, seed=5)
    outputs = {name: [task.fn(x) for x in inputs] for name, task in TASKS.items()}
    for a, b in itertools.combinations(TASKS, 2):
        differ = sum(x != y for x, y in zip(outputs[a], outputs[b]))
        assert differ >= 0.5 * len(inputs), (a, b, differ)


def test_task_split_is_disjoint_and_covers() -> None:
    assert set(TRAIN_TASKS).isdisjoint(HELDOUT_TASKS)
    assert set(TRAIN_TASKS) | set(HELDOUT_TASKS) == set(TASKS)
    assert len(HELDOUT_TASKS) >= 8


def test_every_held_out_task_is_a_new_combination_of_parts_seen_in_training() -> None:
    seen_parts = {part for t in TRAIN_TASKS for part in TASKS[t].cue}
    assert seen_parts == set(CUE_PARTS)
    for task in HELDOUT_TASKS:
        first, second = TASKS[task].cue
        assert NO_PARAMETER != second, task  # a standalone task's own part would be unseen
        assert any(TASKS[t].cue[0] == first for t in TRAIN_TASKS), task
        assert any(TASKS[t].cue[1] == second for t in TRAIN_TASKS), task
        assert TASKS[task].cue not in {TASKS[t].cue for t in TRAIN_TASKS}, task
        assert len(neighbours(task)) >= 4 and set(neighbours(task)) <= set(TRAIN_TASKS)
    families = {TASKS[t].family for t in HELDOUT_TASKS}
    assert families == {task.family for task in TASKS.values()} - {SINGLE}  # one k of every family, and compositions


def test_every_held_out_k_lies_inside_its_family_between_training_neighbours() -> None:
    """Interpolation, not extrapolation: k - 1 and k + 1 of the same member, and k of another member, are trained."""
    members = {TASKS[t].cue[0] for t in TASKS} & {TASKS[t].family for t in TASKS}
    for task in HELDOUT_TASKS:
        member, k = TASKS[task].cue
        if member not in members:
            continue
        same = {TASKS[t].cue[1] for t in TRAIN_TASKS if TASKS[t].cue[0] == member}
        n = int(k.removeprefix("k"))
        assert {f"k{n - 1}", f"k{n + 1}"} <= same, task
        assert any(TASKS[t].cue == (other, k) for t in TRAIN_TASKS for other in members - {member}), task


def test_no_held_out_task_or_description_reaches_training_records() -> None:
    """What the hypernetwork trains on (SFT records, reconstruction descriptions) holds no held-out text or cue."""
    records = make_examples(TRAIN_TASKS, n=3, seed=0)
    heldout_text = {d for t in HELDOUT_TASKS for d in TASKS[t].descriptions}
    heldout_wording = {d for t in TRAIN_TASKS for d in split_descriptions(TASKS[t])[1]}
    assert {r["task"] for r in records} == set(TRAIN_TASKS)
    for r in records:
        assert set(r) == {"task", "descriptions", "input", "output"}  # no cue: the prompt is the bare input
        assert heldout_text.isdisjoint(r["descriptions"]) and heldout_wording.isdisjoint(r["descriptions"])


def test_description_split_is_fixed_disjoint_and_covers() -> None:
    for task in TASKS.values():
        seen, heldout = split_descriptions(task)
        assert len(heldout) == 5
        assert seen + heldout == task.descriptions
        assert set(seen).isdisjoint(heldout)
    seen, heldout = split_descriptions(TASKS["reverse"], n_heldout=3)
    assert len(heldout) == 3 and seen + heldout == TASKS["reverse"].descriptions
    with pytest.raises(ValueError):
        split_descriptions(TASKS["reverse"], n_heldout=0)


def test_telling_inputs_give_an_answer_no_other_task_gives() -> None:
    for task in HELDOUT_TASKS:
        inputs = telling_inputs(task, TRAIN_TASKS, 20, random.Random(0))
        assert len(inputs) == 20
        for x in inputs:
            assert all(TASKS[t].fn(x) != TASKS[task].fn(x) for t in TRAIN_TASKS)


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
