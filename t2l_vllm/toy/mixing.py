"""What a mix of two task descriptions does in the toy world, measured on exact outputs.

For pairs of toy tasks A and B, adapters are generated from the mix
`[{"description": a, "weight": 1 - w}, {"description": b, "weight": w}]` for w in
0, 0.25, 0.5, 0.75, 1, and the embedded base model (through transformers, with
each adapter applied as vLLM applies it) answers fresh toy inputs. Each answer is
classified: A's exact output, B's, the composition A(B(x)) or B(A(x)), or none of
these. The honest question is whether a mix interpolates, composes, or does
neither.

    python -m t2l_vllm.toy.mixing [--inputs 64 --out FILE]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from t2l_vllm.default_model import default_paths
from t2l_vllm.generator import AdapterGenerator
from t2l_vllm.toy.base import greedy_answers, prompt_text
from t2l_vllm.toy.world import TASKS, random_input

# Two pairs whose composition is a held-out task (reverse_then_alternate_case, sort_words_then_uppercase),
# one whose composition is a training task (reverse_then_uppercase), one that does not compose into a toy task.
PAIRS = (("reverse", "alternate_case"), ("sort_words", "uppercase"), ("reverse", "uppercase"), ("sort_words", "first_word"))
WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)


def classify(answer: str, x: str, a: str, b: str) -> str:
    fa, fb = TASKS[a].fn, TASKS[b].fn
    for label, expected in (("A", fa(x)), ("B", fb(x)), ("A(B(x))", fa(fb(x))), ("B(A(x))", fb(fa(x)))):
        if answer == expected:
            return label
    return "none"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m t2l_vllm.toy.mixing", description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/toy_mixing.json"))
    args = parser.parse_args(argv)
    paths = default_paths()
    generator = AdapterGenerator.from_checkpoint(paths.hypernet)
    model = AutoModelForCausalLM.from_pretrained(paths.base_model, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(paths.base_model)
    rng = random.Random(0)
    inputs = [random_input(rng) for _ in range(args.inputs)]
    rows = []
    print(f"{'A':>18} {'B':>18} {'w(B)':>5}  " + "  ".join(f"{k:>8}" for k in ("A", "B", "A(B(x))", "B(A(x))", "none")))
    for a, b in PAIRS:
        da, db = TASKS[a].descriptions[0], TASKS[b].descriptions[0]
        for w in WEIGHTS:
            adapter = generator.generate([[{"description": da, "weight": 1 - w}, {"description": db, "weight": w}]])[0]
            loras = {m: tuple(t[None].expand(len(inputs), *t.shape) for t in adapter.matrices(m)) for m in adapter.lora.target_modules}
            answers = greedy_answers(model, tokenizer, [prompt_text(x) for x in inputs], loras=loras, scaling=adapter.lora.scaling)
            labels = [classify(ans, x, a, b) for ans, x in zip(answers, inputs)]
            share = {k: labels.count(k) / len(labels) for k in ("A", "B", "A(B(x))", "B(A(x))", "none")}
            rows.append({"a": a, "b": b, "weight_b": w, "adapter": adapter.name, **share})
            print(f"{a:>18} {b:>18} {w:>5.2f}  " + "  ".join(f"{share[k]:>8.2f}" for k in share))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "inputs": args.inputs}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
