"""`t2l-vllm`: one module per command, each with `add_parser(subparsers)` and `run(args)`.

`serve` passes the options it does not know to vLLM. A `T2LError` (bad input, a checkpoint that does not fit, ...) ends the command
with its message on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from ..errors import T2LError
from . import demo, generate, import_reference, info, init_hypernet, route, serve, train

COMMANDS = (init_hypernet, info, generate, import_reference, serve, route, train, demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="t2l-vllm", description="Text-to-LoRA for vLLM: describe a task, get a LoRA adapter, serve it."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress at INFO level")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and not getattr(args, "passes_unknown_options", False):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.unknown_options = unknown
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.run(args) or 0)
    except T2LError as err:
        print(f"t2l-vllm {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
