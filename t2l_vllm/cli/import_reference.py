"""`t2l-vllm import-reference`: convert a released Text-to-LoRA checkpoint to this project's format.

Takes the reference's folder (`hypermod.pt`, `args.yaml`, `adapter_config.json`,
e.g. `trained_t2l/llama_8b_t2l` from the Hugging Face repo SakanaAI/text-to-lora).
"""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import-reference", help="convert a reference (SakanaAI) checkpoint", description=__doc__)
    p.add_argument("source", help="reference checkpoint folder or its hypermod.pt")
    p.add_argument("--model", help="base model (folder, config.json or hub id) to check the shapes against")
    p.add_argument("-o", "--output", required=True, help="folder to write the converted checkpoint to")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..hypernet.reference_import import convert_reference_checkpoint

    digest = convert_reference_checkpoint(args.source, args.output, base_model=args.model)
    print(f"wrote {args.output} (fingerprint {digest})")
    return 0
