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
"""

from __future__ import annotations

import os
from argparse import Namespace
from dataclasses import replace
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from ..paths import CONFIG_ENV, settings_file

if TYPE_CHECKING:  # imported where used: `register` runs this module's cheap half in every vLLM process
    from ..service.settings import ServiceSettings

PLUGIN_NAME = "t2l_vllm"
ENDPOINT_GROUP = "vllm.endpoint_plugins"

NOT_CONFIGURED = (
    f"this server has no hypernetwork configured: set {CONFIG_ENV} to a t2l_vllm settings file "
    "(YAML, e.g. `hypernet: /path/to/hypernet`) and restart it, or start it with `t2l-vllm serve`"
)


def plugin_settings(args: Namespace) -> ServiceSettings | None:
    """The settings this API server serves with: `t2l-vllm serve`'s, else the `$T2L_VLLM_CONFIG` file's
    (checked against vLLM's options), else None (not configured).

    Raises `ConfigError` for a file that cannot be read or a launch it cannot serve.
    """
    from ..service.settings import load_settings_file

    settings: ServiceSettings | None = getattr(args, "t2l", None)
    if settings is not None:
        return settings
    path = settings_file()
    if path is None:
        return None
    settings = replace(load_settings_file(path), base_model=args.model)
    check_vllm_options(args, settings)
    return settings


def check_vllm_options(args: Namespace, settings: ServiceSettings) -> None:
    """What `t2l-vllm serve` sets itself, a plain vLLM launch must have been given: LoRA on, a rank
    that fits the hypernetwork's adapters, and the base model the hypernetwork was made for."""
    from ..errors import ConfigError
    from ..hypernet.checkpoint import load_config
    from ..hypernet.shapes import check_shapes_fit, load_base_shapes

    config, _ = load_config(settings.hypernet)
    rank = config.lora.rank
    if not getattr(args, "enable_lora", False):
        raise ConfigError(f"{CONFIG_ENV} names a hypernetwork, but LoRA is off: start vLLM with `--enable-lora --max-lora-rank {rank}`.")
    if (getattr(args, "max_lora_rank", None) or 0) < rank:
        raise ConfigError(f"the hypernetwork writes rank-{rank} adapters: raise `--max-lora-rank` to at least {rank}, got {args.max_lora_rank}.")
    check_shapes_fit(config.base, load_base_shapes(args.model), list(config.lora.target_modules))


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
