"""Does T2L SFT reach held-out toy tasks with more steps? One schedule, scored as it goes.

Trains one hypernetwork by SFT on the toy reproduction's own training data (the
benchmark's `Bench`: training tasks, their seen descriptions, no cue) over a single
`--steps` schedule, and every `--every` steps scores it on the reproduction's
evaluation rows: training tasks with held-out descriptions, held-out tasks, and
held-out tasks in training wordings (exact match, per held-out task too). Writes
one JSON row per checkpoint to `--out`.

    python benchmarks/toy_sft_curve.py [--variant L --steps 12000 --every 3000 --lr 1e-4 --out FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from toy_reproduction import COLUMNS, Bench, Budget, by_heldout_task, exact  # noqa: E402

from t2l_vllm.default_model import default_paths  # noqa: E402
from t2l_vllm.train.data import load_sft_records  # noqa: E402
from t2l_vllm.train.sources import HypernetSource  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", default="L", choices=("L", "M", "S"))
    p.add_argument("--steps", type=int, default=12_000, help="length of the one schedule (default: %(default)s)")
    p.add_argument("--every", type=int, default=3_000, help="score every N steps (default: %(default)s)")
    p.add_argument("--lr", type=float, default=Budget.sft_lr, help="peak learning rate (default: the benchmark's, %(default)s)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "toy_sft_curve.json")
    args = p.parse_args(argv)
    if args.steps <= 0 or args.every <= 0:
        p.error("--steps and --every must be positive")
    torch.manual_seed(0)
    work = args.out.parent / "toy_sft_curve"
    bench = Bench(str(default_paths().base_model), work, Budget(), seed=0)
    records = load_sft_records(bench.data / "train.jsonl")
    hypernet = bench.new_hypernet(args.variant)
    source = HypernetSource(hypernet, bench.encoder, [d for r in records for d in r.descriptions])
    trainer = bench.sft_trainer(source, records, args.steps, args.lr)
    scored = dict(zip(COLUMNS[1:], (bench.heldout_desc, bench.heldout_task, bench.heldout_task_seen_wording)))
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
    args.out.write_text(json.dumps({"command": " ".join(["python", "benchmarks/toy_sft_curve.py", *(argv or sys.argv[1:])]),
                                    "variant": args.variant, "lr": args.lr, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
