"""Where the plugin's settings come from, under `t2l-vllm serve` or a plain `vllm serve`.

`t2l-vllm serve` puts them on vLLM's parsed options (`args.t2l`), which vLLM hands
to every API server process. A plain `vllm serve` (or `python -m
vllm.entrypoints.openai.api_server`) has only the environment: `$T2L_VLLM_CONFIG`
names a settings file (YAML laid out as `ServiceSettings`), the same file that
`t2l-vllm serve` starts from, so both launches make the same server.

vLLM loads an endpoint plugin only when `VLLM_PLUGINS` names it. Setting
`$T2L_VLLM_CONFIG` is the operator's opt-in to this plugin's routes, so the
general plugin (which vLLM loads without being named) names it there, together
with every other installed plugin, when `VLLM_PLUGINS` is unset: the other
plugin groups then load exactly what they would have loaded anyway.

A plain launch is checked as `t2l-vllm serve` checks it, by the same
`check_deployment`, before its engine starts: the general plugin has the file
checked against vLLM's engine arguments the moment vLLM makes its engine config
from them (`check_plain_launch`). The check runs once per launch: processes it
starts inherit `CHECKED_ENV`, which `t2l-vllm serve` and the offline engine set
too, having checked their own settings.
"""

from __future__ import annotations

import os
import sys
from argparse import Namespace
from dataclasses import replace
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from ..paths import CONFIG_ENV, settings_file

if TYPE_CHECKING:  # imported where used: `register` runs this module's cheap half in every vLLM process
    from ..service.settings import ServiceSettings

PLUGIN_NAME = "t2l_vllm"
ENDPOINT_GROUP = "vllm.endpoint_plugins"
CHECKED_ENV = "T2L_VLLM_LAUNCH_CHECKED"  # set once a launch's settings passed `check_deployment`

NOT_CONFIGURED = (
    f"this server has no hypernetwork configured: set {CONFIG_ENV} to a t2l_vllm settings file "
    "(YAML, e.g. `hypernet: /path/to/hypernet`) and restart it, or start it with `t2l-vllm serve`"
)


def plugin_settings(args: Namespace) -> ServiceSettings | None:
    """The settings this API server serves with: `t2l-vllm serve`'s, else the `$T2L_VLLM_CONFIG` file's
    (the served model filled in from vLLM's options), else None (not configured).

    Raises `ConfigError` for a file that cannot be read.
    """
    from ..service.settings import load_settings_file

    settings: ServiceSettings | None = getattr(args, "t2l", None)
    if settings is not None:
        return settings
    path = settings_file()
    if path is None:
        return None
    return replace(load_settings_file(path), base_model=args.model)


def check_plain_launch() -> None:
    """For a plain `vllm serve` with `$T2L_VLLM_CONFIG`: has the file checked against vLLM's engine
    arguments as soon as they are parsed, before any engine starts (`internals.check_engine_args_first`)."""
    from .internals import check_engine_args_first

    if settings_file() is not None and not os.environ.get(CHECKED_ENV):
        check_engine_args_first(_check_settings_file)


def _check_settings_file(engine_args: object) -> None:
    """`check_deployment` for the settings file and the engine arguments; ends the launch with the reason."""
    from ..errors import T2LError
    from ..service.deployment import check_deployment
    from ..service.settings import load_settings_file

    path = settings_file()
    if path is None or os.environ.get(CHECKED_ENV):
        return
    try:
        check_deployment(load_settings_file(path), engine_args.model, engine_args.enable_lora, engine_args.max_lora_rank)  # type: ignore[attr-defined]
    except T2LError as err:
        print(f"t2l_vllm: {CONFIG_ENV}={path}: {err}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    os.environ[CHECKED_ENV] = "1"  # the processes this launch starts inherit it


def name_endpoint_plugin_if_configured() -> None:
    """With `$T2L_VLLM_CONFIG` set and `VLLM_PLUGINS` unset, allow-lists every installed vLLM plugin
    outside the endpoint group, plus this endpoint plugin. Idempotent; child processes inherit it."""
    if settings_file() is None or "VLLM_PLUGINS" in os.environ:
        return
    endpoint_plugins = {ep.name for ep in entry_points(group=ENDPOINT_GROUP)}
    names = {
        ep.name
        for group in entry_points().groups
        if group.startswith("vllm.") and group != ENDPOINT_GROUP
        for ep in entry_points(group=group)
        if ep.name not in endpoint_plugins  # naming another endpoint plugin's name would switch it on too
    }
    os.environ["VLLM_PLUGINS"] = ",".join(sorted(names | {PLUGIN_NAME}))
