"""`t2l-vllm generate`: one PEFT adapter folder per description, from batched passes."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..cache import CacheSettings
from ..errors import ConfigError
from ..progress import progress
from .common import add_generator_options, load_generator, read_description_file

# Descriptions per hypernetwork pass: the server's default batch, so memory stays bounded for a long --file.
BATCH = CacheSettings().max_batch_size


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
    for description in descriptions:  # a bad description stops the command before any folder is written
        generator.normalize(description)
    out = Path(args.output)
    with progress(len(descriptions), "generating adapters", "adapter") as bar:
        for start in range(0, len(descriptions), BATCH):
            batch = descriptions[start : start + BATCH]
            for adapter in generator.generate(batch):
                folder = adapter.save_peft(out / adapter.name)
                bar.write(f"{adapter.name}\t{folder}", file=sys.stdout)
            bar.update(len(batch))
    return 0
