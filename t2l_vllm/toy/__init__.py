"""The toy world and the research run on it, apart from the runtime.

    world, operations, descriptions, tasks.yaml   70 synthetic tasks with exact answers, and their descriptions
    base                                          the toy base model (`t2l-vllm train base`), which takes the task as a cue
    demo                                          the demo's prompts on the embedded default, checked exactly
    reproduction, cue_probe, confusions,          benchmarks and probes of the paper's claims at toy scale,
    sft_curve, mixing                             each run as `python -m t2l_vllm.toy.<name>`

Nothing in t2l_vllm outside this package and the CLI's `demo` and `train base`
imports it: the server, the engine, the cache and the trainers know nothing of
the toy world. The embedded default that was trained here ships as plain files
(`assets/toy_default/`, `default_model.py`) and loads without it.
"""
