"""`t2l-vllm import-reference`: convert a released Text-to-LoRA checkpoint to this project's format.

Takes the reference's folder (`hypermod.pt`, `args.yaml`, `adapter_config.json`,
e.g. `trained_t2l/llama_8b_t2l` from the Hugging Face repo SakanaAI/text-to-lora).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import-reference", help="convert a reference (SakanaAI) checkpoint", description=__doc__)
    p.add_argument("source", help="reference checkpoint folder or its hypermod.pt")
    p.add_argument("--model", help="base model (folder, config.json or hub id) to check the shapes against")
    p.add_argument("--encoder-path", metavar="DIR", help="a local copy of the reference's encoder (gte-large-en-v1.5): its "
                   "weights' hash is recorded, so that `--encoder-path` may load it later (default: the Hugging Face cache's copy, if any)")
    p.add_argument("--rslora-as-written", action="store_true", help="serve adapters with the reference's use_rslora flag as "
                   "written (alpha/sqrt(r)); default: at alpha/r, the scaling its published results were measured at")
    p.add_argument("-o", "--output", required=True, help="folder to write the converted checkpoint to")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..encoder.identity import cached_snapshot, weights_sha256
    from ..hypernet.checkpoint import load_config
    from ..hypernet.reference_import import convert_reference_checkpoint, read_encoder_name

    encoder = Path(args.encoder_path) if args.encoder_path else cached_snapshot(read_encoder_name(args.source))
    sha256 = weights_sha256(encoder) if encoder is not None else ""
    digest = convert_reference_checkpoint(args.source, args.output, args.model, args.rslora_as_written, sha256)
    config, _ = load_config(args.output)
    encoder = config.encoder
    identity = f"weights sha256 {encoder.weights_sha256}" if encoder.weights_sha256 else "by name only (no local copy found to hash)"
    print(f"wrote {args.output} (fingerprint {digest})")
    print(f"adapters: {config.lora.describe_scaling()}")
    print(f"encoder:  {encoder.model}, {identity}")
    return 0
