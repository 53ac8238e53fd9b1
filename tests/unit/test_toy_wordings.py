"""The wordings written outside the templates: what they cover, that their examples are right, that nothing trains on them."""

from __future__ import annotations

from collections import Counter

import pytest

from t2l_vllm.toy import wordings
from t2l_vllm.toy.world import HELDOUT_TASKS, TASKS, TRAIN_TASKS, make_examples

STYLES = {"free", "examples", "question", "terse", "verbose", "typos"}


def _normal(text: str) -> str:
    return " ".join(text.lower().split())


def test_every_held_out_task_has_two_independent_wordings_of_every_style() -> None:
    assert {w.task for w in wordings.INDEPENDENT} == set(HELDOUT_TASKS)  # the held-out task set, whole
    for task in HELDOUT_TASKS:
        styles = Counter(w.style for w in wordings.INDEPENDENT if w.task == task)
        assert set(styles) == STYLES and min(styles.values()) >= 2, (task, styles)


def test_the_development_wordings_describe_training_tasks_only_one_of_every_style() -> None:
    assert {w.task for w in wordings.DEV} <= set(TRAIN_TASKS)
    for task in {w.task for w in wordings.DEV}:
        assert Counter(w.style for w in wordings.DEV if w.task == task) == dict.fromkeys(STYLES, 1), task


def test_the_wordings_examples_are_the_tasks_exact_outputs() -> None:
    for w in (*wordings.INDEPENDENT, *wordings.DEV):
        pairs = wordings.examples_in(w.text)
        assert (w.style == "examples") <= bool(pairs), w  # an examples-only wording has examples
        for x, y in pairs:
            assert TASKS[w.task].fn(x) == y, w


def test_no_wording_is_a_template_rendering_or_a_training_description() -> None:
    """Written by another method: no wording is any task's description, and none reaches the training records."""
    described = {_normal(d) for task in TASKS.values() for d in task.descriptions}
    records = {_normal(d) for r in make_examples(TRAIN_TASKS, n=1, seed=0) for d in r["descriptions"]}
    texts = [w.text for w in (*wordings.INDEPENDENT, *wordings.DEV)]
    assert len(set(texts)) == len(texts)
    assert described.isdisjoint(map(_normal, texts)) and records.isdisjoint(map(_normal, texts))


def test_a_file_that_describes_a_task_it_may_not_is_refused(tmp_path) -> None:
    path = tmp_path / "w.yaml"
    path.write_text("styles: [free]\nheldout:\n  reverse:\n    free: [\"backwards\"]\n")
    with pytest.raises(ValueError, match=r"\['reverse'\] are not tasks"):
        wordings.load_wordings(path, "heldout", HELDOUT_TASKS)
    path.write_text("styles: [free]\nheldout:\n  keep_last_2:\n    poem: [\"x\"]\n")
    with pytest.raises(ValueError, match="unknown styles"):
        wordings.load_wordings(path, "heldout", HELDOUT_TASKS)
