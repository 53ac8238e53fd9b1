"""Scores a trained toy hypernetwork on every column of the reproduction's table, without training anything.

What a checkpoint trained before the wording split (the embedded default, say)
scores on the same evaluation rows as a new run's arms: the same inputs, the same
descriptions, the independent wordings included. The checkpoint's own encoder
(its `encoder.safetensors`, or MiniLM as published) embeds the descriptions.
Columns named by templates mean what they mean for the current split of
`tasks.yaml`; for a checkpoint trained on another split only the independent
wordings (`toy/wordings.py`) are strictly comparable.

    python -m t2l_vllm.toy.score_checkpoint [HYPERNET_DIR] [--out table.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from t2l_vllm.hypernet.checkpoint import load_checkpoint
from t2l_vllm.toy.reproduction import Bench, add_bench_options, options_budget, parse_bench_options, print_table


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m t2l_vllm.toy.score_checkpoint", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("hypernet", nargs="?", help="a toy hypernetwork checkpoint folder (default: the embedded default's)")
    parser.add_argument("--out", help="write the row and its breakdowns here as JSON")
    add_bench_options(parser)
    args = parse_bench_options(parser, argv, positive=())
    if args.hypernet is None:
        from t2l_vllm.default_model import default_paths

        args.hypernet = str(default_paths().hypernet)
    hypernet, _ = load_checkpoint(args.hypernet)
    with tempfile.TemporaryDirectory() as scratch:
        # The bench reads the encoder of `<out>/encoder`: the checkpoint itself, which holds its encoder.
        (Path(scratch) / "encoder").symlink_to(Path(args.hypernet).resolve())
        budget = options_budget(args)
        bench = Bench(args.base, Path(scratch), budget)
        row, breakdown = bench.score_hypernet(hypernet)
    print_table({args.hypernet: row})
    if args.out:
        Path(args.out).write_text(json.dumps({"hypernet": args.hypernet, "row": row, "breakdown": breakdown,
                                              "eval": {"inputs_per_task": budget.eval_inputs,
                                                       "descriptions_per_task": budget.eval_descriptions}}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
