"""This project's generator against the reference's own (SakanaAI/text-to-lora), side by side in one run.

The reference is imported from a checkout the user supplies (`--reference-dir`, the
repository's root; nothing of it is copied here). Its `HyperModulator` is built by
its own code (`create_hypermod`, as `load_hypermod_checkpoint` builds it for an SFT
run) at Mistral-7B shapes (q_proj/v_proj, rank 8, latent 128, head_in 512), over a
PEFT skeleton of the base whose weights stay on the meta device (the hypernetwork
never reads them). Its heads get random weights, its state dict is written as a
reference run folder, and `import_reference_checkpoint` makes this project's model
from that folder: both generators hold the same weights, and a check before timing
confirms that they emit the same A and B.

What is timed, from a task embedding (the encoder is the same for both and left out):

- reference: `task_encoder` + `gen_lora(layer_indices, ...)` (its per-description
  generator: one description a call; 32 adapters are 32 calls);
- ours: `AdapterGenerator.generate_from_embeddings` (the pass, the weight checks and
  the adapter values with their own memory); 32 adapters in one call;
- and each model's pass alone (reference: `get_delta_weights` per module, factorized;
  ours: `TextToLoRA.forward`).

Both run in this process with the same torch threads (`--threads`, default 2), float32.
The measurements interleave, the order rotated each round; each ratio is taken within
a round and reported as the median over rounds with its range. Targets: one adapter
in <= 0.85x the reference's time; 32 adapters at >= 1.5x its throughput.

    python benchmarks/reference_comparison.py --reference-dir ~/text-to-lora [--variants L M]
        [--rounds 7 --threads 2 --out results.json]
"""

from __future__ import annotations

import argparse
import importlib
import importlib.machinery
import json
import os
import statistics
import sys
import tempfile
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import yaml
from hypernet_latency import MODELS, device_name

from t2l_vllm.generator import AdapterGenerator, GeneratorSettings, keep_freed_memory
from t2l_vllm.hypernet.reference_import import import_reference_checkpoint

SCHEMA = "t2l_vllm.reference_comparison/1"
TARGET_ONE = 0.85  # our time for one adapter over the reference's, at most
TARGET_MANY = 1.5  # our throughput for 32 adapters over the reference's, at least
MANY = 32
RANK, ALPHA, TARGETS = 8, 16, ["q_proj", "v_proj"]
EMBEDDING_DIM = 1024  # gte-large-en-v1.5, the reference's task encoder
# Imported by the reference's utils package for evaluation only (metrics, logging); stand-ins are
# put in their place when they are not installed, and the report names them.
OPTIONAL_REFERENCE_IMPORTS = {"inflect": (), "torchmetrics.text.rouge": ("ROUGEScore",), "wandb": ()}


# --- the reference, built by its own code ------------------------------------------------------
def import_reference(reference_dir: Path) -> tuple[types.ModuleType, list[str]]:
    """The reference's `hyper_modulator` module, and the optional packages stood in for."""
    src = reference_dir / "src"
    if not (src / "hyper_llm_modulator" / "hyper_modulator.py").is_file():
        raise SystemExit(f"--reference-dir {reference_dir}: no src/hyper_llm_modulator/hyper_modulator.py; "
                         "give the root of a SakanaAI/text-to-lora checkout")
    # What the stand-ins must not be seen by: accelerate asks whether wandb is installed when
    # transformers' model code is first imported.
    for name in ("peft", "transformers.models.llama.modeling_llama"):
        importlib.import_module(name)

    stood_in = []
    for name, attributes in OPTIONAL_REFERENCE_IMPORTS.items():
        try:
            __import__(name)
        except ImportError:
            parts = name.split(".")
            for i in range(1, len(parts) + 1):
                prefix = ".".join(parts[:i])
                if prefix not in sys.modules:
                    sys.modules[prefix] = types.ModuleType(prefix)
                    sys.modules[prefix].__spec__ = importlib.machinery.ModuleSpec(prefix, None)
                module = sys.modules[prefix]
            for attribute in attributes:
                setattr(module, attribute, object)
            stood_in.append(name)
    sys.path.insert(0, str(src))
    from hyper_llm_modulator import hyper_modulator

    return hyper_modulator, stood_in


class _OnCPU:
    """The PEFT model as the reference's constructor reads it, reporting the CPU as its device
    (its base weights stay on the meta device; only the LoRA layers' shapes and names are read)."""

    device = torch.device("cpu")

    def __init__(self, model: Any) -> None:
        self._model = model

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


def peft_skeleton(hf_config: dict[str, Any]) -> Any:
    """A PEFT LoRA model of the base: base weights on the meta device, LoRA weights on the CPU."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(**{**hf_config, "vocab_size": 32, "intermediate_size": 16})
    with torch.device("meta"):
        base = AutoModelForCausalLM.from_config(config)
    lora = LoraConfig(r=RANK, lora_alpha=ALPHA, use_rslora=True, lora_dropout=0.05, target_modules=TARGETS,
                      task_type="CAUSAL_LM")
    model = get_peft_model(base, lora)
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and (".lora_A." in name or ".lora_B." in name):
            module.to_empty(device="cpu")
            torch.nn.init.kaiming_uniform_(module.weight, a=5**0.5)
    return model


def reference_args(variant: str, model_name: str, latent: int, head_in: int) -> dict[str, Any]:
    """An SFT run's args.yaml as the reference writes it, for variant L or M."""
    return {
        "model_dir": model_name, "emb_model": "Alibaba-NLP/gte-large-en-v1.5", "exp_setup": "hyper_lora",
        "training_task": "sft", "encoder_type": "linear", "use_one_hot_task_emb": False,
        "shared_AB_head": variant == "M", "autoreg_gen": False, "learnable_pos_emb": False,
        "pred_z_score": False, "factorized": False, "delta_w_scaling": 10000, "hypernet_latent_size": latent,
        "head_in_size": head_in, "target_modules": TARGETS, "mt_lora_path": None, "learnable_AB_offset": False,
        "train_ds_names": [],
    }


def build_reference(hm: types.ModuleType, variant: str, model_key: str, seed: int) -> tuple[Any, dict[str, Any]]:
    spec = MODELS[model_key]
    args = reference_args(variant, spec.name, spec.latent_size, spec.head_in_size)
    model = _OnCPU(peft_skeleton(spec.hf_config))
    layers = torch.arange(spec.hf_config["num_hidden_layers"])
    torch.manual_seed(seed)
    hypermod = hm.create_hypermod(argparse.Namespace(**args), "lora", torch.device("cpu"), model, layers,
                                  EMBEDDING_DIM, from_scratch=False)
    with torch.no_grad():  # SFT heads start at zero: give them weights, so the outputs depend on the task
        for head in hypermod.heads.values():
            head.weight.normal_(0.0, 0.02)
    return hypermod.eval(), args


def write_run(folder: Path, hypermod: Any, args: dict[str, Any]) -> Path:
    """The reference's run folder layout: hypermod.pt, args.yaml, adapter_config.json."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({k: v for k, v in hypermod.state_dict().items()}, folder / "hypermod.pt")
    (folder / "args.yaml").write_text(yaml.safe_dump(args))
    # PEFT holds target_modules as a set, which the reference numbers its module types by and
    # `save_pretrained` writes as a list: in this process's hash order, not TARGETS' (see
    # docs/import-reference.md, module order).
    adapter = {"peft_type": "LORA", "r": RANK, "lora_alpha": ALPHA, "use_rslora": True, "lora_dropout": 0.05,
               "target_modules": list(hypermod.target_modules), "task_type": "CAUSAL_LM"}
    (folder / "adapter_config.json").write_text(json.dumps(adapter))
    return folder


# --- what is timed ------------------------------------------------------------------------------
@dataclass
class Pair:
    """The two generators at one variant, and what each call does."""

    variant: str
    hypermod: Any
    generator: AdapterGenerator
    layers: torch.Tensor

    def reference_one(self, emb: torch.Tensor) -> dict[str, torch.Tensor]:
        encoded = self.hypermod.task_encoder(emb)["encoded_task_emb"]
        return self.hypermod.gen_lora(self.layers, encoded)

    def reference_pass(self, emb: torch.Tensor) -> Any:
        encoded = self.hypermod.task_encoder(emb)["encoded_task_emb"].expand(len(self.layers), -1)
        return [self.hypermod.get_delta_weights(self.layers, m, encoded, factorized=True) for m in TARGETS]

    def ours(self, emb: torch.Tensor) -> list[Any]:
        return self.generator.generate_from_embeddings([f"description {i}" for i in range(len(emb))], emb)

    def ours_pass(self, emb: torch.Tensor) -> Any:
        return self.generator.hypernet(emb, self.generator._workspace)


def max_difference(pair: Pair, emb: torch.Tensor) -> float:
    """Largest |ours - reference| over every A and B of one adapter (the same weights: float32 rounding)."""
    reference = pair.reference_one(emb)
    ours = pair.ours(emb)[0]
    if set(reference) != set(ours.tensors):
        raise SystemExit(f"{pair.variant}: the two adapters have different keys, e.g. "
                         f"{sorted(set(reference) ^ set(ours.tensors))[:1]}")
    return max(float((ours.tensors[k] - v).abs().max()) for k, v in reference.items())


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(pair: Pair, rounds: int) -> dict[str, Any]:
    one, many = torch.randn(1, EMBEDDING_DIM), torch.randn(MANY, EMBEDDING_DIM)
    cases: dict[str, Callable[[], object]] = {
        "reference_one": lambda: pair.reference_one(one),
        "ours_one": lambda: pair.ours(one),
        "reference_many": lambda: [pair.reference_one(many[i:i + 1]) for i in range(MANY)],
        "ours_many": lambda: pair.ours(many),
        "reference_pass_one": lambda: pair.reference_pass(one),
        "ours_pass_one": lambda: pair.ours_pass(one),
        "reference_pass_many": lambda: [pair.reference_pass(many[i:i + 1]) for i in range(MANY)],
        "ours_pass_many": lambda: pair.ours_pass(many),
    }
    names = list(cases)
    with torch.no_grad():
        for fn in cases.values():  # warm-up: first calls allocate and pick kernels
            fn()
        seconds: dict[str, list[float]] = {name: [] for name in names}
        for r in range(rounds):
            for name in names[2 * r % len(names):] + names[:2 * r % len(names)]:
                seconds[name].append(timed(cases[name]))
    ratios = {
        "one_time_ours_over_reference": [o / p for o, p in zip(seconds["ours_one"], seconds["reference_one"])],
        "many_throughput_ours_over_reference": [p / o for o, p in zip(seconds["ours_many"], seconds["reference_many"])],
        "pass_one_time_ours_over_reference": [o / p for o, p in zip(seconds["ours_pass_one"], seconds["reference_pass_one"])],
        "pass_many_throughput_ours_over_reference": [p / o for o, p in zip(seconds["ours_pass_many"], seconds["reference_pass_many"])],
    }
    return {
        "ms": {name: 1e3 * statistics.median(v) for name, v in seconds.items()},
        "ms_by_round": {name: [1e3 * x for x in v] for name, v in seconds.items()},
        "ratios": {name: {"median": statistics.median(v), "min": min(v), "max": max(v), "by_round": v}
                   for name, v in ratios.items()},
    }


def shown(ratios: dict[str, dict[str, Any]], name: str) -> str:
    r = ratios[name]
    return f"{r['median']:.2f} ({r['min']:.2f}-{r['max']:.2f})"


# --- main ---------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference-dir", type=Path, required=True,
                        help="root of a SakanaAI/text-to-lora checkout (its src/ is imported)")
    parser.add_argument("--variants", nargs="+", default=["L", "M"], choices=["L", "M"],
                        help="L (separate heads) and M (shared A/B head); the reference's S needs a rotary "
                             "class that transformers 5 no longer has")
    parser.add_argument("--model", default="mistral-7b", choices=list(MODELS), help="base-model shapes")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for both (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds (default: %(default)s)")
    parser.add_argument("--pack-heads", action=argparse.BooleanOptionalAction, default=GeneratorSettings.pack_heads,
                        help="our heads' packed copies for small passes, as the generator keeps them (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "reference_comparison.json")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.threads < 1:
        parser.error("--rounds and --threads must be positive")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as the generator's process runs (both generators share the process)
    hm, stood_in = import_reference(args.reference_dir.expanduser().resolve())
    load = os.getloadavg()[0]
    print(f"device: {device_name(torch.device('cpu'))}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, "
          f"load {load:.2f}; reference from {args.reference_dir}" + (f" (stood in: {', '.join(stood_in)})" if stood_in else ""))
    results = {}
    with tempfile.TemporaryDirectory(prefix="t2l-reference-") as tmp:
        for variant in args.variants:
            hypermod, run_args = build_reference(hm, variant, args.model, seed=0)
            ours = import_reference_checkpoint(write_run(Path(tmp) / variant, hypermod, run_args))
            layers = torch.arange(MODELS[args.model].hf_config["num_hidden_layers"])
            pair = Pair(variant, hypermod, AdapterGenerator(ours, None, f"reference-{variant}", GeneratorSettings(pack_heads=args.pack_heads)), layers)  # type: ignore[arg-type]
            with torch.no_grad():
                difference = max_difference(pair, torch.randn(1, EMBEDDING_DIM))
            measured = measure(pair, args.rounds)
            results[variant] = {"max_abs_difference": difference, **measured}
            show = partial(shown, measured["ratios"])
            ms = measured["ms"]
            print(f"\n{variant}: same A/B to {difference:.1e}; ms: reference one {ms['reference_one']:.1f}, ours one "
                  f"{ms['ours_one']:.1f}; reference {MANY} calls {ms['reference_many']:.0f}, ours one call of {MANY} "
                  f"{ms['ours_many']:.0f}")
            print(f"  one adapter, time ours/reference: {show('one_time_ours_over_reference')} (target <= {TARGET_ONE})")
            print(f"  {MANY} adapters, throughput ours/reference: {show('many_throughput_ours_over_reference')} "
                  f"(target >= {TARGET_MANY})")
            print(f"  pass alone: one {show('pass_one_time_ours_over_reference')}, "
                  f"{MANY} {show('pass_many_throughput_ours_over_reference')}", flush=True)
            del pair, hypermod, ours
    targets = {v: {"one_met": res["ratios"]["one_time_ours_over_reference"]["median"] <= TARGET_ONE,
                   "many_met": res["ratios"]["many_throughput_ours_over_reference"]["median"] >= TARGET_MANY}
               for v, res in results.items()}
    report = {"schema": SCHEMA, "device": device_name(torch.device("cpu")), "cpu_cores": os.cpu_count(),
              "torch_threads": args.threads, "torch": torch.__version__, "load_average_at_start": load,
              "load_average_at_end": os.getloadavg()[0], "model": args.model, "rounds": args.rounds,
              "pack_heads": args.pack_heads,
              "reference_stood_in": stood_in, "targets": {"one_at_most": TARGET_ONE, "many_at_least": TARGET_MANY, **targets},
              "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
