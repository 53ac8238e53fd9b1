"""Options shared by several commands; defaults and help come from the settings dataclasses."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError
from ..generator import AdapterGenerator, GeneratorSettings
from .settings_args import add_setting, settings_from

def add_hypernet_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--hypernet", metavar="DIR", help="hypernetwork checkpoint folder (default: the embedded default)"
    )


def add_generator_options(parser: argparse.ArgumentParser) -> None:
    add_hypernet_option(parser)
    group = parser.add_argument_group("adapter generation")
    add_setting(group, GeneratorSettings, "max_description_chars")
    add_setting(group, GeneratorSettings, "max_delta_norm")
    add_setting(group, GeneratorSettings, "device", "--hypernet-device")
    add_setting(group, GeneratorSettings, "dtype", "--hypernet-dtype")
    add_setting(group, GeneratorSettings, "encoder_path", "--encoder-path")
    add_setting(group, GeneratorSettings, "strict")
    add_setting(group, GeneratorSettings, "pack_heads")


def generator_settings(args: argparse.Namespace, base: GeneratorSettings | None = None) -> GeneratorSettings:
    """`base` (default: GeneratorSettings()) with the generation flags the user gave on top."""
    return settings_from(args, GeneratorSettings, base)


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
