"""Options shared by several commands; defaults come from the settings dataclasses."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError
from ..generator import DTYPES, AdapterGenerator, GeneratorSettings

_DEFAULTS = GeneratorSettings()


def add_hypernet_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--hypernet", metavar="DIR", help="hypernetwork checkpoint folder (default: the embedded default)"
    )


def add_generator_options(parser: argparse.ArgumentParser) -> None:
    add_hypernet_option(parser)
    group = parser.add_argument_group("adapter generation")
    group.add_argument("--max-description-chars", type=int, default=_DEFAULTS.max_description_chars, help="longest description accepted (default: %(default)s)")
    group.add_argument("--max-delta-norm", type=float, default=_DEFAULTS.max_delta_norm, help="refuse adapters whose weight update norm exceeds this (default: %(default)s)")
    group.add_argument("--hypernet-device", default=_DEFAULTS.device, help="device for encoder and hypernetwork: auto, cpu, cuda, cuda:1 (default: %(default)s)")
    group.add_argument("--hypernet-dtype", default=_DEFAULTS.dtype, choices=["auto", *DTYPES], help="auto: float32 on CPU, bfloat16 on GPU")


def generator_settings(args: argparse.Namespace) -> GeneratorSettings:
    return GeneratorSettings(
        max_description_chars=args.max_description_chars,
        max_delta_norm=args.max_delta_norm,
        device=args.hypernet_device,
        dtype=args.hypernet_dtype,
    )


def hypernet_dir(args: argparse.Namespace) -> Path:
    """The --hypernet folder, or the embedded default's (built on first use)."""
    if args.hypernet:
        return Path(args.hypernet)
    from ..default_model import default_paths

    return default_paths().hypernet


def load_generator(args: argparse.Namespace) -> AdapterGenerator:
    return AdapterGenerator.from_checkpoint(hypernet_dir(args), generator_settings(args))


def read_description_file(path: str, option: str) -> list[str]:
    """Descriptions from a text file, one a line, blank lines skipped; `option` names the flag in errors."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read `{option} {path}`: {err}") from err
    return [line for line in lines if line.strip()]
