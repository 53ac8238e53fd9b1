"""`t2l-vllm demo`: describe tasks in words, watch vLLM serve each with its own generated adapter.

With no arguments it runs on the embedded default (a tiny base model and an
untrained hypernetwork, so the answers are not meaningful yet, but each
description visibly changes them); `--model/--hypernet` run it on real models.
"""

from __future__ import annotations

import argparse
import time

from .common import add_generator_options, generator_settings

DEMO_PROMPTS = [
    ("Answer multiple-choice science questions with the letter of the right option.", "Which gas do plants take in? (A) oxygen (B) carbon dioxide"),
    ("Solve grade-school math word problems step by step.", "Tom has 3 apples and buys 4 more. How many now?"),
    ("Translate English sentences into French.", "The cat sleeps on the sofa."),
    ("Classify the sentiment of a movie review as positive or negative.", "A dull, overlong film."),
    (None, "Tom has 3 apples and buys 4 more. How many now?"),
]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="generate adapters for a few tasks and serve them offline with vLLM", description=__doc__)
    p.add_argument("--model", help="base model (default: the embedded default)")
    p.add_argument("--max-tokens", type=int, default=24)
    p.add_argument("--max-model-len", type=int, default=1024)
    p.add_argument("--gpu-memory-utilization", type=float, default=None, help="vLLM's; on CPU the fraction of RAM it reserves (default: 0.3 on CPU)")
    add_generator_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..vllm_plugin.offline import T2LEngine, greedy

    on_cpu = not torch.cuda.is_available()
    memory = args.gpu_memory_utilization or (0.3 if on_cpu else 0.85)
    print("starting vLLM (a minute on CPU) ...", flush=True)
    engine = T2LEngine(
        args.model,
        args.hypernet,
        generator_settings=generator_settings(args),
        gpu_memory_utilization=memory,
        max_model_len=args.max_model_len,
        max_loras=4,
        dtype="float32" if on_cpu else "auto",
    )
    with engine:
        conversations = [[{"role": "user", "content": query}] for _, query in DEMO_PROMPTS]
        descriptions = [d for d, _ in DEMO_PROMPTS]
        start = time.perf_counter()
        outputs = engine.chat(conversations, descriptions, greedy(args.max_tokens))
        seconds = time.perf_counter() - start
        print(f"\nbase model: {engine.model}\nhypernetwork: {engine.generator.fingerprint[:16]} ({engine.generator.config.variant})\n")
        for (description, query), output in zip(DEMO_PROMPTS, outputs):
            adapter = engine.generator.name_for(description) if description else "base"
            print(f"task:    {description or '(none: base model)'}")
            print(f"adapter: {adapter}")
            print(f"query:   {query}")
            print(f"answer:  {output.outputs[0].text!r}\n")
        print(f"{len(outputs)} requests, {len(engine.store)} generated adapters, one vLLM batch: {seconds:.2f} s")
    return 0
