"""`t2l-vllm`: one module per command, each with `add_parser(subparsers)` and `run(args)`.

`serve` passes the options it does not know to vLLM. Unless `--verbose`, vLLM's
start-up and INFO logs stay out of sight (see `output.py`). A `T2LError` (bad
input, a checkpoint that does not fit, ...) ends the command with its message on
stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import atexit
import os
import sys
from collections.abc import Sequence

from ..errors import T2LError
from . import check, demo, generate, import_reference, info, init_hypernet, route, serve, train
from .output import configure_output

COMMANDS = (init_hypernet, info, check, generate, import_reference, serve, route, train, demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="t2l-vllm", description="Text-to-LoRA for vLLM: describe a task, get a LoRA adapter, serve it."
    )
    add_output_options(parser, False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    for command_parser in _subparsers(sub):  # `t2l-vllm demo --verbose` as well as `t2l-vllm --verbose demo`
        add_output_options(command_parser, argparse.SUPPRESS)
    return parser


def add_output_options(parser: argparse.ArgumentParser, default: object) -> None:
    """--verbose and --log-file; a subcommand's copy defaults to SUPPRESS so that it never undoes the top-level flag."""
    parser.add_argument("-v", "--verbose", action="store_true", default=default,
                        help="show vLLM's start-up and INFO logs and library warnings (default: only this command's lines and errors)")
    parser.add_argument("--log-file", metavar="FILE", default=None if default is False else default,
                        help="append everything logged, vLLM's INFO lines included, to FILE")


def _subparsers(sub: argparse._SubParsersAction) -> list[argparse.ArgumentParser]:
    """Every command's parser, nested ones (`train sft`) included."""
    found = []
    for parser in sub.choices.values():
        found.append(parser)
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                found += _subparsers(action)
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and not getattr(args, "passes_unknown_options", False):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.unknown_options = unknown
    configure_output(args.verbose, args.log_file)
    try:
        return int(args.run(args) or 0)
    except T2LError as err:
        print(f"t2l-vllm {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def console() -> None:
    """The `t2l-vllm` command: `main`, then an exit whose last line is the command's own.

    Python's own shutdown would run after the command's last word: native libraries vLLM loads
    (triton's bindings) then print pages of "nanobind: leaked ..." below the line that says why the
    server stopped. So the exit handlers run, the streams are flushed, and the process ends at once.
    """
    status = main()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    console()
