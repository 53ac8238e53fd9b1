"""`t2l-vllm check`: the first thing to run on a new machine: does this hypernetwork serve right here?

Loads the hypernetwork and its task encoder as the server does (the encoder's
self-check included), says at which scaling its adapters are served and why,
holds probe adapters against the base model's weights when they are at hand
(`strength.py`: the detector of scaling bugs), and builds the base model with
vLLM on the meta device to compare every generated matrix's shape with vLLM's.
Exit status 0 when every check passed, 1 when one failed (with `--strict`, also
when one warned); a hypernetwork or encoder that cannot load is an error (2).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from .common import add_generator_options, hypernet_dir, load_generator

LABEL = 14


@dataclass
class Finding:
    check: str
    status: str  # ok | warning | FAILED | skipped
    lines: list[str] = field(default_factory=list)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="check a hypernetwork against its encoder, base weights and vLLM", description=__doc__)
    p.add_argument("--model", help="base model (local folder or hub id) to check against (default: the hypernetwork's base model)")
    p.add_argument("--no-vllm", action="store_true", help="skip the shape check against vLLM's model class (it imports vLLM)")
    add_generator_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    folder = hypernet_dir(args)
    generator = load_generator(args)  # raises for a hypernetwork or encoder that cannot serve: the encoder self-check
    config = generator.config
    model = args.model or config.base.name
    findings = [
        Finding("encoder", "ok", [_encoder_line(generator)]),
        Finding("scaling", "ok", [config.lora.describe_scaling()]),
        _strength(generator, str(folder), model),
        Finding("vllm shapes", "skipped", ["--no-vllm"]) if args.no_vllm else _vllm_shapes(config, model),
    ]
    print(f"{'hypernetwork':<{LABEL}}{folder} ({config.variant}, fingerprint {generator.fingerprint[:12]})")
    print(f"{'base model':<{LABEL}}{model} ({config.base.model_type or '?'}, {config.base.num_layers} layers, "
          f"{' '.join(config.lora.target_modules)})")
    for finding in findings:
        print(f"{finding.check:<{LABEL}}{finding.status}: {finding.lines[0]}")
        for line in finding.lines[1:]:
            print(f"{'':<{LABEL}}  {line}")
    failed = [f.check for f in findings if f.status == "FAILED"]
    warned = [f.check for f in findings if f.status == "warning"]
    verdict = "FAILED: " + ", ".join(failed) if failed else ("warning: " + ", ".join(warned) if warned else "every check passed")
    print(f"{'result':<{LABEL}}{verdict}")
    return 1 if failed or (warned and generator.settings.strict) else 0


def _encoder_line(generator) -> str:
    encoder, probe = generator.encoder.settings, generator.encoder.self_check
    identity = f"weights sha256 {encoder.weights_sha256[:16]}..." if encoder.weights_sha256 else "named, not hashed"
    return (f"{encoder.model} ({encoder.dim}-d, {identity}); self-check: unrelated texts at cosine <= {probe.unrelated_max:.3f}, "
            f"near-identical wordings {probe.paraphrase_mean:.3f} against {probe.unrelated_mean:.3f} for unrelated ones")


def _strength(generator, folder: str, model: str) -> Finding:
    from ..strength import MAX_DRIFT, MAX_UNRECORDED_STRENGTH, PROBE_DESCRIPTIONS, TRAINED_LLM_LORAS, check_strength, overall

    found = check_strength(generator, folder, model)
    if found.modules is None:
        return Finding("strength", "skipped", [f"no safetensors weights of `{model}` at hand (a local folder or the Hugging Face cache); "
                                               "give `--model DIR` to measure"])
    lines = [f"{len(PROBE_DESCRIPTIONS)} probe adapters, ||scaling * B @ A|| / ||W|| over every layer: median {overall(found.modules):.3g}"]
    lines += [f"{m.module:<10} median {m.median:.3g}  max {m.max:.3g}" for m in found.modules]
    if found.record is not None:
        lines.append(f"in training ({found.record.by}): median {found.record.median:.3g}; flagged beyond {MAX_DRIFT:g}x either way")
    else:
        low, high = TRAINED_LLM_LORAS
        lines.append(f"no training record: trained LoRAs on 7-8B models show {low}-{high}; flagged above {MAX_UNRECORDED_STRENGTH}")
    if found.problem is not None:
        lines.insert(0, found.problem)
        return Finding("strength", "warning", lines)
    return Finding("strength", "ok", lines)


def _vllm_shapes(config, model: str) -> Finding:
    from ..adapters import peft_key
    from ..vllm_plugin.model_shapes import vllm_shapes

    try:
        expected = vllm_shapes([model])[model]
    except RuntimeError as err:
        return Finding("vllm shapes", "FAILED", [str(err).splitlines()[0], *str(err).splitlines()[-3:]])
    wrong = []
    for module in config.lora.target_modules:
        shape = config.base.module_shape(module)
        for layer in range(config.base.num_layers):
            name = peft_key(layer, module, "A").removeprefix("base_model.model.").rsplit(".lora_", 1)[0]
            if expected.get(name) != [shape.in_features, shape.out_features]:
                wrong.append(f"{name}: generated [{shape.in_features} -> {shape.out_features}], vLLM's {expected.get(name)}")
    if wrong:
        return Finding("vllm shapes", "FAILED", [f"{len(wrong)} generated matrices do not fit vLLM's model", *wrong[:5]])
    count = config.base.num_layers * len(config.lora.target_modules)
    return Finding("vllm shapes", "ok", [f"all {count} adapted projections match vLLM's model built from {model}'s config.json"])
