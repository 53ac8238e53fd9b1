"""Where the toy reproduction's zero-shot gap comes from: descriptions regressed straight onto cues.

The toy base model does a task when its cue (`toy.base.ToyCues`) is written at
`<s>`, and a held-out task's cue is a new sum of parts that training tasks use.
So the least an adapter for a held-out task must get right is that vector. This
strips T2L down to that regression: description embedding -> cue, trained on
the training tasks' seen descriptions (the hypernetworks' own data, no held-out
task), with three regressors:

- a shallow MLP (one hidden layer of 256 units);
- the T2L hypernetwork's trunk (its task projection, mixer, two residual
  blocks and head input: `TextToLoRA`'s own modules, at the benchmark's size)
  with a linear head onto the cue;
- the same trunk trained with mixup: pairs of training embeddings and their
  cues interpolated with a Beta(0.2, 0.2) weight, which asks the map to be
  linear between tasks, as an additive cue is;
- the same trunk without its two residual blocks (`HypernetConfig.residual_blocks`
  = 0; this arm asks whether depth is what fits the tasks as clusters).

For each: the relative error of the predicted cue (|predicted - cue| / |cue|),
and the base model's exact match with the predicted cue in place of the task's,
on training tasks described in held-out wordings, on held-out tasks, and on the
reproduction's wording columns (held-out tasks in unseen templates and in the
independent wordings, training tasks in theirs): the reproduction's inputs and
descriptions. A regressor told every training task's cue is a ceiling on what a
hypernetwork reading the same encoder can reach, so the wording columns say
whether a miss there is the encoder's or the hypernetwork's. Every regressor trains with the same
seed, steps, batch and L1 loss on per-element z-scores, as reconstruction does.

Single runs swing by 0.1 on held-out tasks (8 tasks, which ones land is
luck), so every arm is trained with `--seeds` seeds and the table gives the
mean and the range. `--seen-templates N` trains on the first N of each task's
seen descriptions only (for rendered tasks, the first N templates), to ask how
much more wordings would buy.

    python -m t2l_vllm.toy.cue_probe [--base DIR] [--steps 3000] [--seeds 3] [--seen-templates N] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from t2l_vllm.toy.base import greedy_answers, prompt_text
from t2l_vllm.toy.reproduction import COLUMNS as TABLE_COLUMNS
from t2l_vllm.toy.reproduction import Bench, add_bench_options, by_heldout_task, exact, options_budget, parse_bench_options
from t2l_vllm.toy.wordings import INDEPENDENT
from t2l_vllm.toy.world import HELDOUT_TASKS, TASKS, TRAIN_TASKS, split_descriptions

MIXUP_ALPHA = 0.2
BATCH = 32
LR = 1e-3
BY_STYLE = "held-out tasks, independent wordings, exact match by style"
# The reproduction's columns but its first (the regressors' own training descriptions) and held-out
# tasks in training wordings.
COLUMNS = (TABLE_COLUMNS[1], TABLE_COLUMNS[2], *TABLE_COLUMNS[4:])


def shallow_mlp(dim: int, cue_size: int) -> nn.Module:
    return nn.Sequential(nn.Linear(dim, 256), nn.SiLU(), nn.Linear(256, cue_size))


class T2LTrunk(nn.Module):
    """The L hypernetwork's path from a task embedding to the head input of layer 0's v_proj (where a cue
    adapter lives: task projection joined with the layer and module embeddings, mixer, two residual
    blocks, head input), then a linear head onto the cue. `changes`: other `HypernetConfig` fields."""

    def __init__(self, bench: Bench, cue_size: int, seed: int, **changes) -> None:
        super().__init__()
        self.hypernet = bench.new_hypernet("L", seed=seed, **changes)
        self.v_proj = self.hypernet.modules_order.index("v_proj")
        self.head = nn.Linear(self.hypernet.config.head_in_size, cue_size)

    def forward(self, task_emb: torch.Tensor) -> torch.Tensor:
        h = self.hypernet
        trunk_input = h.embed_inputs(task_emb)[:, self.v_proj, 0]  # (N, d)
        return self.head(h.to_head(h.block2(h.block1(h.mixer(trunk_input)))))


def fit(net: nn.Module, x: torch.Tensor, z: torch.Tensor, steps: int, mixup: bool, seed: int = 0) -> None:
    """L1 regression of z-scored cues `z` on embeddings `x`, batches of `BATCH` drawn with replacement."""
    generator = torch.Generator().manual_seed(seed)
    beta = torch.distributions.Beta(MIXUP_ALPHA, MIXUP_ALPHA)
    optimizer = torch.optim.AdamW(net.parameters(), LR)
    net.train()
    for _ in range(steps):
        i = torch.randint(len(x), (BATCH,), generator=generator)
        xb, zb = x[i], z[i]
        if mixup:
            j = torch.randint(len(x), (BATCH,), generator=generator)
            lam = beta.sample((BATCH, 1))
            xb, zb = lam * xb + (1 - lam) * x[j], lam * zb + (1 - lam) * z[j]
        loss = (net(xb) - zb).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    net.eval()


def measure(bench: Bench, predict: Callable[[Sequence[str]], torch.Tensor]) -> dict:
    """Relative cue error and exact match with the predicted cue, per column, and held-out tasks one by one."""
    result: dict = {}
    for column in COLUMNS:
        descriptions = bench.described[column]
        rows, texts = bench.described_rows(descriptions)
        with torch.no_grad():
            predicted, true = predict(texts), bench.cues([task for task, _ in rows])
        answers = greedy_answers(bench.model, bench.tokenizer, [prompt_text(x) for _, x in rows], max_new_tokens=28, cues=predicted)
        result[column] = {
            "relative cue error": float(((predicted - true).norm(dim=1) / true.norm(dim=1)).mean()),
            "exact match": exact(answers, rows, [task for task, _ in rows]),
        }
        if column == TABLE_COLUMNS[2]:
            result["held-out tasks, exact match by task"] = by_heldout_task(answers, rows)
        if column == TABLE_COLUMNS[5]:
            result[BY_STYLE] = bench.by_style(answers, rows, descriptions, INDEPENDENT)
    return result


def training_pairs(seen_templates: int | None = None) -> list[tuple[str, str]]:
    """(task, description) for every training task and its first `seen_templates` seen descriptions (all: None)."""
    return [(t, d) for t in TRAIN_TASKS for d in split_descriptions(TASKS[t])[0][:seen_templates]]


def run(bench: Bench, steps: int, seeds: int, seen_templates: int | None) -> dict:
    pairs = training_pairs(seen_templates)
    with torch.no_grad():
        cues = bench.cues([t for t, _ in pairs])
    mean, std = cues.mean(0), cues.std(0) + 1e-6
    x, z = bench.embed([d for _, d in pairs]), (cues - mean) / std
    dim, cue_size = x.shape[1], cues.shape[1]

    arms = {
        "shallow MLP": (lambda seed: shallow_mlp(dim, cue_size), False),
        "T2L trunk": (lambda seed: T2LTrunk(bench, cue_size, seed), False),
        "T2L trunk, mixup": (lambda seed: T2LTrunk(bench, cue_size, seed), True),
        "T2L trunk, no residual blocks": (lambda seed: T2LTrunk(bench, cue_size, seed, residual_blocks=0), False),
    }
    results = {}
    for name, (build, mixup) in arms.items():
        runs = []
        for seed in range(seeds):
            torch.manual_seed(seed)
            net = build(seed)
            fit(net, x, z, steps, mixup, seed)
            runs.append(measure(bench, lambda descriptions: net(bench.embed(descriptions)) * std + mean))
        results[name] = summary(runs)
        print(f"{name:30s}", "  ".join(f"{c}: error {results[name][c]['relative cue error']['mean']:.3f}, "
                                        f"exact match {results[name][c]['exact match']['mean']:.3f}" for c in COLUMNS), flush=True)
    return results


def summary(runs: Sequence[dict]) -> dict:
    """Mean, min and max over seeds of every figure; held-out tasks one by one and the styles as means."""
    def stats(values: Sequence[float]) -> dict[str, float]:
        return {"mean": sum(values) / len(values), "min": min(values), "max": max(values)}

    out: dict = {c: {k: stats([r[c][k] for r in runs]) for k in runs[0][c]} for c in COLUMNS}
    by_task = [r["held-out tasks, exact match by task"] for r in runs]
    out["held-out tasks, exact match by task"] = {t: sum(b[t] for b in by_task) / len(runs) for t in HELDOUT_TASKS}
    out[BY_STYLE] = {s: sum(r[BY_STYLE][s] for r in runs) / len(runs) for s in runs[0][BY_STYLE]}
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m t2l_vllm.toy.cue_probe", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_bench_options(parser)
    parser.add_argument("--out", default="benchmarks/results/toy_cue_probe", help="folder for table.json")
    parser.add_argument("--steps", type=int, default=3000, help="training steps of every regressor (default: %(default)s)")
    parser.add_argument("--seeds", type=int, default=3, help="runs of every arm (default: %(default)s)")
    parser.add_argument("--seen-templates", type=int, help="train on each task's first N seen descriptions (default: all)")
    args = parse_bench_options(parser, argv, positive=("steps", "seeds", "seen_templates"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    bench = Bench(args.base, out, options_budget(args))
    report = {"base": args.base, "steps": args.steps, "seeds": args.seeds, "seen_templates": args.seen_templates,
              "arms": run(bench, args.steps, args.seeds, args.seen_templates)}
    report["total_seconds"] = time.monotonic() - start
    (out / "table.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"total {report['total_seconds'] / 60:.1f} min; wrote {out / 'table.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
