"""The toy reproduction benchmark runs end to end at a tiny scale, writes a complete table, and trains hypernetworks on training tasks only."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from multiprocessing.pool import ThreadPool
from pathlib import Path

import pytest
import torch

from t2l_vllm.hypernet.checkpoint import load_checkpoint
from t2l_vllm.toy import confusions, reproduction, sft_curve
from t2l_vllm.toy.wordings import DEV, INDEPENDENT
from t2l_vllm.toy.world import HELDOUT_DESCRIPTIONS, HELDOUT_TASKS, TASKS, TRAIN_TASKS, split_descriptions


def test_a_tiny_run_writes_every_arm_column_and_the_plot_and_leaks_nothing(tmp_path):
    bench = reproduction
    # as a user runs it: a script whose arms run in two worker processes
    subprocess.run([sys.executable, "-m", "t2l_vllm.toy.reproduction", "--out", str(tmp_path), "--scale", "0.003", "--eval-inputs", "2",
                    "--eval-descriptions", "1", "--workers", "2"], check=True, capture_output=True)
    report = json.loads((tmp_path / "table.json").read_text())
    assert report["workers"] == 2
    table = report["table"]
    assert set(table) == {
        "base, no cue", "base with the task's cue", "task-specific LoRAs (one per task)", "multi-task LoRA",
        "T2L recon (M)", "T2L recon (L), cue adapters", "T2L SFT (L)", "T2L SFT (M)", "T2L SFT (S)",
    }
    for arm, row in table.items():
        assert set(bench.COLUMNS) <= set(row), arm
        assert all(0.0 <= v <= 1.0 for v in row.values()), (arm, row)
    for arm in ("T2L recon (M)", "T2L recon (L), cue adapters", "T2L SFT (L)", "T2L SFT (M)", "T2L SFT (S)"):
        assert set(bench.CONTROLS) <= set(table[arm]), arm
        assert set(report["heldout_tasks_by_task"][arm]) == set(HELDOUT_TASKS)
        assert set(report["independent_wordings_by_task"][arm]) == set(HELDOUT_TASKS)
        assert set(report["independent_wordings_by_style"][arm]) == {w.style for w in INDEPENDENT}
    for variant in "LMS":  # an SFT arm keeps the strength record of its training, as `t2l-vllm train sft` does
        assert json.loads((tmp_path / "hypernets" / f"sft-{variant}" / "strength.json").read_text())["median"] > 0
    validation = report["encoder_tuning_validation"]["nearest_task_accuracy_by_step"]
    assert validation[0][0] == 0 and all(0.0 <= accuracy <= 1.0 for _, accuracy in validation)
    # the shipped base model knows the tasks when cued, not without the cue
    assert table["base with the task's cue"][bench.COLUMNS[0]] > table["base, no cue"][bench.COLUMNS[0]] + 0.5
    assert (tmp_path / "adapters.png").stat().st_size > 10_000
    assert (tmp_path / "loras" / "multitask" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "hypernets" / "sft-L" / "model.safetensors").is_file()
    assert {p.name for p in (tmp_path / "cue_loras").iterdir()} == set(TRAIN_TASKS)  # no held-out task's cue

    # What the hypernetworks trained on: training tasks only, their seen descriptions only (the prompts are bare inputs),
    # no description rendered from a held-out template, none of the wordings written outside the templates.
    heldout_text = {d for t in HELDOUT_TASKS for d in TASKS[t].descriptions}
    heldout_wording = {d for t in TRAIN_TASKS for d in split_descriptions(TASKS[t])[1]}
    independent = {w.text for w in (*INDEPENDENT, *DEV)}
    heldout_templates = {t for task in TASKS.values() for t in task.templates[len(task.templates) - HELDOUT_DESCRIPTIONS :]}
    template_of = {d: t for task in TASKS.values() for d, t in zip(task.descriptions, task.templates)}
    for name in ("train.jsonl", "recon_library.jsonl", "cue_library.jsonl"):
        lines = [json.loads(line) for line in (tmp_path / "data" / name).read_text().splitlines()]
        assert {line["task"] for line in lines} == set(TRAIN_TASKS), name
        for line in lines:
            assert heldout_text.isdisjoint(line["descriptions"]) and heldout_wording.isdisjoint(line["descriptions"]), name
            assert independent.isdisjoint(line["descriptions"]), name
            assert heldout_templates.isdisjoint(template_of[d] for d in line["descriptions"] if d in template_of), name
    # the encoder every hypernetwork reads was tuned on that SFT data's tasks (their descriptions: train.jsonl above)
    tuning = torch.load(tmp_path / "encoder" / "trainer_state.pt", weights_only=True)
    assert tuning["tasks"] == sorted(TRAIN_TASKS)
    assert load_checkpoint(tmp_path / "hypernets" / "sft-L")[0].config.encoder.tuned_layers == 6

    # Again with --arms: only that hypernetwork and the base model's rows, on the encoder the first run tuned.
    tuned = (tmp_path / "encoder" / "encoder.safetensors").read_bytes()
    subprocess.run([sys.executable, "-m", "t2l_vllm.toy.reproduction", "--out", str(tmp_path), "--scale", "0.003", "--eval-inputs", "2",
                    "--eval-descriptions", "1", "--workers", "1", "--arms", "T2L SFT (L)"], check=True, capture_output=True)
    again = json.loads((tmp_path / "table.json").read_text())
    assert set(again["table"]) == {"base, no cue", "base with the task's cue", "T2L SFT (L)"}
    assert again["train_seconds"]["encoder tuning"] == report["train_seconds"]["encoder tuning"]
    assert (tmp_path / "encoder" / "encoder.safetensors").read_bytes() == tuned

    # A checkpoint scored on every column without training: the run's own SFT L gets its row of the table back
    # (to one answer in 16: the texts may be embedded in other batches, which can round differently).
    scored = tmp_path / "scored.json"
    subprocess.run([sys.executable, "-m", "t2l_vllm.toy.score_checkpoint", str(tmp_path / "hypernets" / "sft-L"), "--out", str(scored),
                    "--eval-inputs", "2", "--eval-descriptions", "1"], check=True, capture_output=True)
    row, expected = json.loads(scored.read_text())["row"], again["table"]["T2L SFT (L)"]
    assert set(row) == set(expected) and all(abs(row[c] - expected[c]) <= 1 / 16 for c in row), (row, expected)


def test_chosen_arms_run_with_the_jobs_they_wait_for_and_nothing_else():
    sft = [job.name for job in reproduction.jobs_in_order(["T2L SFT (L)"])]
    assert sft == ["encoder tuning", "T2L SFT (L)", "base model"]
    recon = [job.name for job in reproduction.jobs_in_order(["T2L recon (M)"])]
    loras = [f"task LoRA {t}" for t in (*TRAIN_TASKS, *HELDOUT_TASKS)]
    assert recon == ["encoder tuning", *loras, "T2L recon (M)", "base model"]  # recon M fits the task LoRAs
    every = [job.name for job in reproduction.jobs_in_order()]
    assert [name for name in every if name in recon] == recon  # the order of the full run


def test_jobs_run_as_soon_as_what_they_wait_for_is_done_earliest_first():
    bench = reproduction
    started, lock = [], threading.Lock()

    def job(name: str) -> str:
        with lock:
            started.append(name)
        return name.upper()

    jobs = [bench.Job("a", job, ("a",), after=("b",)), bench.Job("b", job, ("b",)), bench.Job("c", job, ("c",))]
    with ThreadPool(1) as pool:  # the scheduler only needs `apply_async`: threads stand in for the worker processes
        results = bench.run_jobs(jobs, pool, workers=1)
    assert results == {"a": "A", "b": "B", "c": "C"}
    assert started == ["b", "a", "c"]  # "a" waits for "b", then goes before "c", which comes later in the list


def test_a_failed_job_stops_the_run_with_its_name_and_error():
    bench = reproduction

    def broken() -> None:
        raise ValueError("no such task")

    with ThreadPool(2) as pool:
        with pytest.raises(RuntimeError, match="the job `multi-task LoRA` failed") as failure:
            bench.run_jobs([bench.Job("multi-task LoRA", broken), bench.Job("other", int)], pool, workers=2)
        assert isinstance(failure.value.__cause__, ValueError)
        with pytest.raises(ValueError, match="never run"):
            bench.run_jobs([bench.Job("a", int, after=("missing",))], pool, workers=2)


def test_the_sft_curve_scores_one_schedule_at_each_checkpoint(tmp_path):
    module = sft_curve
    out = tmp_path / "curve.json"
    assert module.main(["--steps", "4", "--every", "3", "--out", str(out), "--residual-blocks", "0", "--train-tasks", "5",
                        "--eval-inputs", "2", "--eval-descriptions", "1", "--encoder-tuning-steps", "2"]) == 0
    report = json.loads(out.read_text())
    assert report["hypernet_options"] == {"residual_blocks": 0}
    assert len(report["train_tasks"]) == 5 and set(report["train_tasks"]) <= set(TRAIN_TASKS)
    assert set(module.nested_subset(TRAIN_TASKS, 3)) < set(report["train_tasks"])  # a smaller set lies inside a larger one
    rows = report["rows"]
    assert [row["step"] for row in rows] == [3, 4]  # the last stretch is cut to the schedule's end
    for row in rows:
        assert all(0.0 <= row[c] <= 1.0 for c in ("train tasks, held-out descriptions", "held-out tasks", "held-out tasks, training wordings"))
        assert set(row["held-out tasks, by task"]) == set(HELDOUT_TASKS)


def test_the_confusions_split_the_held_out_column_into_right_a_training_task_and_neither(tmp_path, capsys):
    module = confusions
    out = tmp_path / "confusions.json"
    with pytest.raises(SystemExit):  # argparse's error, not a traceback
        module.main(["--out", str(out), "--hypernet", str(tmp_path / "missing")])
    assert f"hypernetwork checkpoint `{tmp_path / 'missing'}` does not exist" in capsys.readouterr().err
    assert module.main(["--out", str(out), "--eval-inputs", "3", "--eval-descriptions", "2"]) == 0
    report = json.loads(out.read_text())

    # the same rows, scored the reproduction's way, give the same exact match task by task
    from t2l_vllm.encoder import load_task_encoder

    bench = reproduction.Bench(report["base"], tmp_path / "check", reproduction.Budget(eval_inputs=3, eval_descriptions=2))
    hypernet, _ = load_checkpoint(Path(report["hypernet"]))
    bench.encoder = load_task_encoder(report["hypernet"], hypernet.config)
    answers, rows = bench.described_answers(hypernet, bench.heldout_task)
    expected = reproduction.by_heldout_task(answers, rows)
    held_out = report["held-out wordings"]
    assert held_out["exact match by task"] == expected
    assert set(held_out["exact match by template"]) == {"0", "1"}
    for wording in module.WORDINGS:
        for row in report[wording]["rows"]:
            assert sum(row["outcomes"].values()) == row["answers"] == 3
            assert set(row["outcomes"]) <= {module.RIGHT, module.NEITHER, *TRAIN_TASKS}
