"""The shipped starter library, calibrated on tests/data/routing_fit.jsonl and checked on a held-out set."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from t2l_vllm.cli import main as cli
from t2l_vllm.router import STARTER_LIBRARY, EmbeddingRouter, TaskLibrary, evaluate, load_labelled

DATA = Path(__file__).parent.parent / "data"


@pytest.fixture(scope="module")
def starter():
    return TaskLibrary.load("starter")


def test_starter_library_shape(starter):
    assert len(starter.tasks) >= 20
    assert all(len(t.examples) >= 8 and len(t.descriptions) >= 2 for t in starter.tasks)
    names = {t.name for t in starter.tasks}
    for family in ("science_multiple_choice", "grade_school_math", "yes_no_reading_comprehension", "commonsense_completion", "python_code_generation"):
        assert family in names


def test_fit_then_eval_on_the_labelled_sets(tmp_path, capsys):
    """`route fit` on the fit set picks a threshold reaching 0.85 there; the held-out set
    (never seen by fit) is reported and must not collapse."""
    library = shutil.copy(STARTER_LIBRARY, tmp_path / "library.yaml")
    assert cli(["route", "fit", str(library), str(DATA / "routing_fit.jsonl")]) == 0
    calibrated = TaskLibrary.load(library)
    router = EmbeddingRouter(calibrated)
    fit = evaluate(router, load_labelled(DATA / "routing_fit.jsonl", calibrated))
    held_out = evaluate(router, load_labelled(DATA / "routing_heldout.jsonl", calibrated))
    print(f"fit accuracy {fit.accuracy:.3f}, held-out accuracy {held_out.accuracy:.3f}, "
          f"off-topic to fallback {fit.off_topic_fallback_rate:.3f} / {held_out.off_topic_fallback_rate:.3f}")
    assert fit.n >= 120 and held_out.n >= 60
    assert fit.accuracy >= 0.85
    assert fit.off_topic_fallback_rate >= 0.9
    assert held_out.accuracy >= 0.78
    capsys.readouterr()
    assert cli(["route", "eval", str(library), str(DATA / "routing_heldout.jsonl")]) == 0
    import json

    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["n"] == held_out.n and last["accuracy"] == pytest.approx(held_out.accuracy, abs=1e-4)
    assert {"accuracy", "coverage", "n"} <= set(last)


def test_shipped_threshold_is_the_calibrated_one(starter, tmp_path):
    library = shutil.copy(STARTER_LIBRARY, tmp_path / "library.yaml")
    cli(["route", "fit", str(library), str(DATA / "routing_fit.jsonl")])
    assert starter.threshold == pytest.approx(TaskLibrary.load(library).threshold, abs=1e-4)
