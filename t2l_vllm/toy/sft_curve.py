"""Does T2L SFT reach held-out toy tasks with more steps? One schedule, scored as it goes.

Trains one hypernetwork by SFT on the toy reproduction's own training data (the
benchmark's `Bench`: training tasks, their seen descriptions, no cue) over a single
`--steps` schedule, and every `--every` steps scores it on the reproduction's
evaluation rows: training tasks with held-out descriptions, held-out tasks, and
held-out tasks in training wordings (exact match, per held-out task too). Writes
one JSON row per checkpoint to `--out`. `--residual-blocks` is the hypernetwork's
own option (`HypernetConfig`); `--base` another toy base. `--train-tasks N` trains
on N of the training tasks only, the first N of one fixed shuffle, so that smaller
sets are subsets of larger ones (the paper's scaling of zero-shot with the number
of training tasks); the evaluation rows stay the same.

    python -m t2l_vllm.toy.sft_curve [--variant L --steps 12000 --every 3000 --lr 1e-4 --out FILE]
        [--base DIR] [--residual-blocks 0|1|2] [--seed N] [--train-tasks N]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

from t2l_vllm.cli.settings_args import add_setting, given
from t2l_vllm.hypernet.config import HypernetConfig
from t2l_vllm.toy.reproduction import (
    COLUMNS, TRAIN_TASKS, Bench, Budget, add_bench_options, by_heldout_task, exact, options_budget, parse_bench_options,
)
from t2l_vllm.train.sources import HypernetSource


def nested_subset(tasks: tuple[str, ...], n: int) -> tuple[str, ...]:
    """The first n of one fixed shuffle of `tasks`: a smaller subset is always inside a larger one."""
    return tuple(random.Random(1234).sample(sorted(tasks), len(tasks))[:n])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m t2l_vllm.toy.sft_curve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", default="L", choices=("L", "M", "S"))
    p.add_argument("--steps", type=int, default=12_000, help="length of the one schedule (default: %(default)s)")
    p.add_argument("--every", type=int, default=3_000, help="score every N steps (default: %(default)s)")
    p.add_argument("--lr", type=float, default=Budget.sft_lr, help="peak learning rate (default: the benchmark's, %(default)s)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/toy_sft_curve.json"))
    p.add_argument("--seed", type=int, default=0, help="seed of the hypernetwork's initial weights (default: %(default)s)")
    p.add_argument("--train-tasks", type=int, help="train on this many training tasks (default: all)")
    add_bench_options(p)
    add_setting(p, HypernetConfig, "residual_blocks")
    args = parse_bench_options(p, argv, positive=("steps", "every"))
    if args.train_tasks is not None and not 0 < args.train_tasks <= len(TRAIN_TASKS):
        p.error(f"--train-tasks must be between 1 and {len(TRAIN_TASKS)}, got {args.train_tasks}")
    hypernet_options = given(args, HypernetConfig)
    torch.manual_seed(args.seed)
    work = args.out.parent / "toy_sft_curve"
    bench = Bench(args.base, work, options_budget(args), seed=0)
    bench.write_training_data()
    records = bench.train_records
    trained = nested_subset(TRAIN_TASKS, args.train_tasks or len(TRAIN_TASKS))
    records = [r for r in records if r.task in trained]
    hypernet = bench.new_hypernet(args.variant, seed=args.seed, **hypernet_options)
    source = HypernetSource(hypernet, bench.encoder, [d for r in records for d in r.descriptions])
    trainer = bench.sft_trainer(source, records, args.steps, args.lr)
    scored = {column: bench.described[column] for column in COLUMNS[1:4]}
    rows, start = [], time.monotonic()
    while trainer.step < args.steps:
        losses = trainer.train(steps=min(args.every, args.steps - trainer.step), log=lambda _: None)
        row = {"step": trainer.step, "train_loss": sum(losses[-50:]) / len(losses[-50:]), "minutes": (time.monotonic() - start) / 60}
        for column, descriptions in scored.items():
            answers, described = bench.described_answers(hypernet, descriptions)
            row[column] = exact(answers, described, [t for t, _ in described])
            if column == COLUMNS[2]:
                row["held-out tasks, by task"] = by_heldout_task(answers, described)
        hypernet.train()
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "held-out tasks, by task"}), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": " ".join(["python", "-m", "t2l_vllm.toy.sft_curve", *(argv or sys.argv[1:])]),
                                    "variant": args.variant, "lr": args.lr, "base": args.base, "seed": args.seed, "train_tasks": sorted(trained),
                                    "hypernet_options": hypernet_options, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
