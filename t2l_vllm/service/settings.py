"""What the adapter service is started with, as plain data that crosses process boundaries.

vLLM hands its parsed options (with these settings on them) to every API server
process it spawns, and an API server hands them to the service it starts, as JSON
on the service's standard input. Defaults live on the dataclasses they belong to.
The same settings, written as YAML, are the file `$T2L_VLLM_CONFIG` names: how a
plain `vllm serve` learns its hypernetwork, and the base `t2l-vllm serve` starts from.
"""

from __future__ import annotations

import json
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from ..cache import CacheSettings
from ..errors import ConfigError
from ..generator import GeneratorSettings
from ..router import RouterSettings


@dataclass(frozen=True)
class ServiceSettings:
    """The hypernetwork to serve, the bounds of its generator, cache and router, and what API servers add."""

    hypernet: str = field(metadata={"help": "hypernetwork checkpoint folder"})
    adapter_dir: str | None = field(
        default=None,
        metadata={"help": "folder for the generated PEFT folders vLLM loads; none: a new folder on /dev/shm (or the temp dir)"},
    )
    generator: GeneratorSettings = field(default_factory=GeneratorSettings)
    cache: CacheSettings = field(default_factory=CacheSettings)
    router: RouterSettings | None = field(default=None, metadata={"help": "route requests without a task_description; none: off"})
    preload: tuple[str, ...] = field(
        default=(), metadata={"help": "descriptions generated at start-up and kept for the server's life, listed in /v1/models"}
    )
    base_model: str | None = field(  # set by the launch from vLLM's --model
        default=None, metadata={"help": "the served base model, whose weights the adapters' strength is checked against at start-up; none: the hypernetwork's"}
    )
    max_service_restarts: int = field(  # read by the API servers and the offline engine, which restart the service
        default=5, metadata={"help": "deaths of the adapter service within `service_restart_window_s` (or failed starts in a row) "
                                     "after which it is not started again: requests with a task_description are then refused"}
    )
    service_restart_window_s: float = field(default=300.0, metadata={"help": "the window `max_service_restarts` counts deaths in"})
    service_start_timeout_s: float = field(  # loading a large hypernetwork and encoder from a slow disk or the hub
        default=600.0, metadata={"help": "seconds a start of the adapter service may take to be ready; a start that takes longer "
                                         "(a hung mount, a stalled download) is killed and counts as a failed start"}
    )
    playground: bool = field(  # read by the API servers; the service itself ignores it
        default=True, metadata={"help": "serve the playground page at GET /t2l/playground (and POST /t2l/adapter), behind --api-key like every route"}
    )

    def __post_init__(self) -> None:
        if self.max_service_restarts < 0:
            raise ConfigError(f"`max_service_restarts` must be >= 0, got {self.max_service_restarts}.")
        if self.service_restart_window_s <= 0:
            raise ConfigError(f"`service_restart_window_s` must be positive, got {self.service_restart_window_s}.")
        if self.service_start_timeout_s <= 0:
            raise ConfigError(f"`service_start_timeout_s` must be positive, got {self.service_start_timeout_s}.")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ServiceSettings":
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> "ServiceSettings":
        """The settings a mapping such as `asdict(settings)` describes, missing keys at their defaults.

        Read field by field from the dataclass itself, nested settings included, so a new
        field needs no code here. Raises `ConfigError` naming an unknown key (a typo would
        otherwise be ignored), a missing required one, or a value that its class refuses.
        """
        return _settings(cls, doc, "")


def _settings(cls: type, doc: Any, prefix: str) -> Any:
    """An instance of the settings dataclass `cls` from `doc`, field by field (`prefix`: where it
    sits in the file, for messages), nested settings the same way."""
    _check_keys(doc, cls, prefix)
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in fields(cls):
        if f.name not in doc:
            if f.default is MISSING and f.default_factory is MISSING:
                raise ConfigError(f"t2l_vllm settings: `{prefix}{f.name}` is missing.")
            continue
        values[f.name] = _field_value(hints[f.name], f"{prefix}{f.name}", doc[f.name])
    try:
        return cls(**values)
    except TypeError as err:  # a value of the wrong kind, e.g. a mapping where a number goes
        raise ConfigError(f"t2l_vllm settings: {f'`{prefix[:-1]}`: ' if prefix else ''}{err}") from None


def _field_value(hint: Any, name: str, value: Any) -> Any:
    """A field's value from a mapping: nested settings built from theirs, sequences as tuples, and
    a switch only from true or false (YAML's "false" in quotes is a string, which Python counts as on)."""
    args = typing.get_args(hint)
    nested = next((a for a in (hint, *args) if is_dataclass(a)), None)
    if nested is not None:
        if value is None:
            return None if type(None) in args else nested()
        return _settings(nested, value, f"{name}.")
    if typing.get_origin(hint) is tuple:
        return tuple(value or ())
    if hint is bool and not isinstance(value, bool):
        raise ConfigError(f"t2l_vllm settings: `{name}` must be true or false, got {value!r}.")
    return value


def load_settings_file(path: str | Path) -> ServiceSettings:
    """The settings in a YAML (or JSON) file laid out as `ServiceSettings`: the one way to configure
    a plain `vllm serve`, and the base that `t2l-vllm serve`'s flags override.

    Keys left out keep their defaults; without `hypernet` it is the embedded default.
    Relative paths are taken from the server's working directory, as flags are.
    Raises `ConfigError` naming the file.
    """
    try:
        doc = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"cannot read the t2l_vllm settings file `{path}`: {err}") from None
    doc = {} if doc is None else doc
    if isinstance(doc, dict) and doc.get("hypernet") is None:
        from ..default_model import default_paths

        doc = {**doc, "hypernet": str(default_paths().hypernet)}
    try:
        return ServiceSettings.from_dict(doc)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def _check_keys(doc: object, settings_class: type, prefix: str) -> None:
    if not isinstance(doc, dict):
        raise ConfigError(f"t2l_vllm settings: `{prefix.rstrip('.') or 'the document'}` must be a mapping, got {type(doc).__name__}.")
    known = {f.name for f in fields(settings_class)}
    unknown = sorted(str(key) for key in doc if key not in known)
    if unknown:
        raise ConfigError(f"t2l_vllm settings: unknown key `{prefix}{unknown[0]}`; known: {', '.join(sorted(known))}.")
