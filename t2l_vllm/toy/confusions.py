"""Where a toy hypernetwork's held-out answers go: right, a training task's output, or neither.

The reproduction's held-out column is one number; this splits it. It loads a
toy base model and a trained hypernetwork (the embedded default's by default:
the reproduction's SFT L) and answers the reproduction's held-out rows (`Bench`:
held-out tasks on inputs whose answer no training task gives), description by
description, in held-out wordings and in training wordings. Each answer is
counted as the task's own output, as the output of a training task (the first
in the world's order whose output it is), or as neither. The n-th description of a
task comes from the n-th template of its kind, so the exact match by description
position is the exact match by template.

Prints one line per (wording, task, description) and writes the counts, the
exact match by task and by template position to `--out`.

    python -m t2l_vllm.toy.confusions [--hypernet DIR] [--base DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from t2l_vllm.errors import CheckpointError
from t2l_vllm.hypernet.checkpoint import load_checkpoint
from t2l_vllm.encoder import load_task_encoder
from t2l_vllm.toy.reproduction import TASKS, Bench, add_bench_options, options_budget, parse_bench_options, training_task_answered

RIGHT, NEITHER = "right", "neither"
WORDINGS = ("held-out wordings", "training wordings")


def outcome(task: str, text: str, answer: str) -> str:
    """RIGHT, the name of the training task whose output `answer` is, or NEITHER."""
    if answer == TASKS[task].fn(text):
        return RIGHT
    return training_task_answered(answer, text) or NEITHER


def confusions(bench: Bench, hypernet, descriptions: dict[str, tuple[str, ...]]) -> list[dict]:
    """One row per (task, description): the description, its position and the outcome counts of its answers.

    Every description's answers come from one batched pass; `Bench.described_rows` lays them out task by
    task, description by description, each over the task's inputs.
    """
    answers, described = bench.described_answers(hypernet, descriptions)
    rows, start = [], 0
    for task, descs in descriptions.items():
        n = len(bench.inputs[task])
        for position, description in enumerate(descs):
            chunk = zip(answers[start : start + n], described[start : start + n])
            counts = Counter(outcome(task, text, answer) for answer, (_, text) in chunk)
            rows.append({"task": task, "template": position, "description": description, "answers": n, "outcomes": dict(counts)})
            start += n
    return rows


def exact_by(rows: list[dict], key: str) -> dict:
    """Exact match over the rows grouped by `key`."""
    right, total = Counter(), Counter()
    for row in rows:
        right[row[key]] += row["outcomes"].get(RIGHT, 0)
        total[row[key]] += row["answers"]
    return {group: right[group] / total[group] for group in total}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m t2l_vllm.toy.confusions", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hypernet", help="trained hypernetwork folder (default: the embedded default's)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/toy_confusions.json"),
                   help="JSON report (default: %(default)s)")
    add_bench_options(p)
    args = parse_bench_options(p, argv, positive=())
    if args.hypernet is None:
        from t2l_vllm.default_model import default_paths

        args.hypernet = str(default_paths().hypernet)
    try:
        hypernet, fingerprint = load_checkpoint(Path(args.hypernet))
    except CheckpointError as err:
        p.error(str(err))
    report = {"hypernet": args.hypernet, "fingerprint": fingerprint, "base": args.base}  # the fingerprint names it on any machine
    bench = Bench(args.base, args.out.parent, options_budget(args), seed=0)  # scores only: writes nothing there
    bench.encoder = load_task_encoder(args.hypernet, hypernet.config)  # the encoder this hypernetwork reads
    for wording, descriptions in zip(WORDINGS, (bench.heldout_task, bench.heldout_task_seen_wording)):
        rows = confusions(bench, hypernet, descriptions)
        for row in rows:
            top = ", ".join(f"{name} {n}" for name, n in Counter(row["outcomes"]).most_common(3))
            print(f"{wording:18s} {row['task']:28s} {top:60s} | {row['description']}", flush=True)
        report[wording] = {"exact match by task": exact_by(rows, "task"), "exact match by template": exact_by(rows, "template"), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    for wording in WORDINGS:
        by_template = ", ".join(f"{position}: {score:.3f}" for position, score in report[wording]["exact match by template"].items())
        print(f"{wording}, exact match by template position: {by_template}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
