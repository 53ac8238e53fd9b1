"""`t2l-vllm demo`: describe tasks in words, watch vLLM serve each with its own generated adapter.

With no arguments it runs on the embedded default: the toy world's tiny base
model, which knows the word tasks but not which one is asked, and the trained
hypernetwork that writes that into an adapter from a description. The prompts
mix descriptions the hypernetwork was trained on, descriptions it never saw,
two written for the demo, and tasks held out of its training; each answer is
checked against the task's exact output. `--model/--hypernet` run it on real
models with general-purpose prompts.
"""

from __future__ import annotations

import argparse
import time

from .common import add_generator_options, generator_settings

GENERAL_PROMPTS = [
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
    p.add_argument("--max-model-len", type=int, default=512)
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
        use_tqdm_on_load=args.verbose,
    )
    toy = args.model is None and args.hypernet is None
    if toy:
        from ..toy.demo import TOY_PROMPTS, expected_answer

        prompts = TOY_PROMPTS
    else:
        prompts = [(d, q, None, None) for d, q in GENERAL_PROMPTS]
    with engine:
        conversations = [[{"role": "user", "content": query}] for _, query, _, _ in prompts]
        descriptions = [d for d, _, _, _ in prompts]
        start = time.perf_counter()
        outputs = engine.chat(conversations, descriptions, greedy(args.max_tokens), use_tqdm=args.verbose)
        seconds = time.perf_counter() - start
        print(f"\nbase model: {engine.model}\nhypernetwork: {engine.fingerprint[:16]}\n")
        right = 0
        for (description, query, task, why), output in zip(prompts, outputs):
            answer = output.outputs[0].text
            print(f"task:     {description or '(none: base model)'}" + (f"   [{why}]" if why else ""))
            print(f"adapter:  {output.lora_request.lora_name if output.lora_request else 'base'}")
            print(f"query:    {query}")
            print(f"answer:   {answer!r}")
            if task:
                expected = expected_answer(task, query)
                right += answer == expected
                print(f"expected: {expected!r} {'(right)' if answer == expected else '(wrong)'}")
            print()
        if toy:
            print(f"{right} of {sum(1 for p in prompts if p[2])} described tasks answered exactly")
        adapters = {o.lora_request.lora_name for o in outputs if o.lora_request}
        print(f"{len(outputs)} requests, {len(adapters)} generated adapters, one vLLM batch: {seconds:.2f} s")
    return 0
