"""Command-line flags derived from settings dataclasses.

A setting has one home: its dataclass field holds the default and the help
(`field(default=..., metadata={"help": ..., "choices": ...})`) and `__post_init__`
its checks. A flag made here takes its default and help from the field, so
neither is ever written twice. A flag the user did not give parses to `Unset`,
which lets the layer below decide: for `serve` the settings file
(`$T2L_VLLM_CONFIG`), else the dataclass itself.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import MISSING, Field, dataclass, fields, is_dataclass, replace
from typing import Any, TypeVar

S = TypeVar("S")


@dataclass(frozen=True)
class Unset:
    """The value of a flag that was not given; prints as the default it stands for (`%(default)s` in help)."""

    default: Any

    def __str__(self) -> str:
        if self.default is None:
            return "none"
        if isinstance(self.default, (tuple, list)):
            return " ".join(map(str, self.default)) or "none"
        return f"{self.default:g}" if isinstance(self.default, float) else str(self.default)


@dataclass(frozen=True)
class Setting:
    """Which field a flag sets, and the factor from the flag's unit to the field's (MiB -> bytes)."""

    settings_class: type
    name: str
    scale: float = 1.0

    @property
    def field(self) -> Field:
        return next(f for f in fields(self.settings_class) if f.name == self.name)

    @property
    def default(self) -> Any:
        """The field's default in the flag's unit (None for a required field)."""
        f = self.field
        value = f.default if f.default is not MISSING else (f.default_factory() if f.default_factory is not MISSING else None)
        return value / self.scale if self.scale != 1.0 and value is not None else value

    @property
    def help(self) -> str | None:
        """The field's help, or that of the field it overrides: a subclass that redeclares a field
        only to change its default (`SFTSettings.lr`) keeps its parent's help."""
        for cls in self.settings_class.__mro__:
            if is_dataclass(cls):
                f = next((f for f in fields(cls) if f.name == self.name), None)
                if f is not None and "help" in f.metadata:
                    return f.metadata["help"]
        return None


def dest(settings_class: type, name: str) -> str:
    """Where a field's flag lands on the namespace; one place per field, whatever the flag is called."""
    return f"{settings_class.__name__}.{name}"


def add_setting(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    settings_class: type,
    name: str,
    *flags: str,
    scale: float = 1.0,
    **kwargs: Any,
) -> argparse.Action:
    """Adds one flag (`--field-name` unless `flags` name it) for a field of a settings dataclass.

    Its default and help are the field's; `type` comes from the default unless given
    (needed where the default is None), `choices` from the field's metadata. A bool
    field is a `--name/--no-name` switch. `scale` converts the flag's unit to the field's.
    """
    setting = Setting(settings_class, name, scale)
    default = setting.default
    text = setting.help or ""
    if isinstance(default, bool):
        kwargs.setdefault("action", argparse.BooleanOptionalAction)
    elif "action" not in kwargs:
        base_type = kwargs.pop("type", None) or (type(default) if default is not None and not isinstance(default, tuple) else str)
        kwargs["type"] = _scaled(base_type, scale) if scale != 1.0 else base_type
        if isinstance(default, tuple):
            kwargs.setdefault("nargs", "+")
    if "choices" in setting.field.metadata:
        kwargs.setdefault("choices", setting.field.metadata["choices"])
    flags = flags or (f"--{name.replace('_', '-')}",)
    if kwargs.get("action") is None and "choices" not in kwargs:
        kwargs.setdefault("metavar", flags[0].lstrip("-").upper().replace("-", "_"))  # as argparse names it, not by dest
    action = parser.add_argument(*flags, dest=dest(settings_class, name), default=Unset(default), help=text, **kwargs)
    if "%(default)" not in (action.help or ""):  # BooleanOptionalAction adds it itself on some Pythons
        action.help = f"{text} (default: %(default)s)" if text else "default: %(default)s"
    action.setting = setting  # type: ignore[attr-defined]  # read by the tests that check every derived flag
    return action


def add_settings_arguments(parser: argparse.ArgumentParser, settings_class: type) -> None:
    """One flag per field of a settings dataclass."""
    for f in fields(settings_class):
        add_setting(parser, settings_class, f.name)


def given(args: argparse.Namespace, settings_class: type) -> dict[str, Any]:
    """{field: value} for the fields of `settings_class` whose flags the user gave."""
    values = {}
    for f in fields(settings_class):
        value = getattr(args, dest(settings_class, f.name), Unset(None))
        if not isinstance(value, Unset):
            values[f.name] = tuple(value) if isinstance(value, list) else value
    return values


def settings_from(args: argparse.Namespace, settings_class: type[S], under: S | None = None, **fixed: Any) -> S:
    """`under` (default: the dataclass's defaults) with `fixed` and then the flags the user gave on top."""
    values = {**fixed, **given(args, settings_class)}
    return settings_class(**values) if under is None else replace(under, **values)  # type: ignore[type-var]


def _scaled(base_type: Callable[[str], Any], scale: float) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        return int(base_type(text) * scale)

    convert.__name__ = getattr(base_type, "__name__", "value")  # argparse names it in "invalid float value"
    return convert
