"""`t2l-vllm generate`: one PEFT adapter folder per description, from one batched pass."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError
from .common import add_generator_options, load_generator, read_description_file


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="write LoRA adapters for task descriptions", description=__doc__)
    p.add_argument("descriptions", nargs="*", metavar="DESCRIPTION", help="task descriptions, one adapter each")
    p.add_argument("--file", help="a text file with one description a line (blank lines skipped)")
    p.add_argument("-o", "--output", required=True, help="folder to write the adapter folders into")
    add_generator_options(p)
    p.set_defaults(run=run)


def read_descriptions(args: argparse.Namespace) -> list[str]:
    descriptions = list(args.descriptions)
    if args.file:
        descriptions += read_description_file(args.file, "--file")
    if not descriptions:
        raise ConfigError("give at least one description, as arguments or with `--file`.")
    return descriptions


def run(args: argparse.Namespace) -> int:
    descriptions = read_descriptions(args)
    generator = load_generator(args)
    adapters = generator.generate(descriptions)
    out = Path(args.output)
    for adapter in adapters:
        folder = adapter.save_peft(out / adapter.name)
        print(f"{adapter.name}\t{folder}")
    return 0
