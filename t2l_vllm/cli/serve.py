"""`t2l-vllm serve`: vLLM's OpenAI-compatible server, with a generated adapter per `task_description`.

Every option not listed here is vLLM's own (`--port`, `--api-key`, `--max-loras`,
`--max-cpu-loras`, `--tensor-parallel-size`, `--gpu-memory-utilization`, ...)
and is passed to vLLM unchanged. LoRA is switched on, with `--max-lora-rank` at
least the hypernetwork's rank. With `$T2L_VLLM_CONFIG` naming a settings file
(the one way to configure a plain `vllm serve` with this plugin), its settings
are the defaults and the flags given here override them.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from ..cache import CacheSettings
from ..paths import CONFIG_ENV, settings_file
from ..router import RouterSettings
from ..service.deployment import check_deployment
from ..service.settings import ServiceSettings, load_settings_file
from .common import add_generator_options, generator_settings, read_description_file
from .output import quiet_vllm_options
from .route import add_router_options, router_settings
from .settings_args import add_setting, settings_from

def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve", help="serve an OpenAI-compatible API with per-request generated adapters", description=__doc__, allow_abbrev=False
    )
    p.add_argument("--model", help="base model: local folder or hub id (default: the hypernetwork's base model)")
    add_generator_options(p)
    group = p.add_argument_group("adapter cache and batching")
    add_setting(group, ServiceSettings, "adapter_dir")
    add_setting(group, CacheSettings, "max_entries", "--adapter-cache-entries")
    add_setting(group, CacheSettings, "max_bytes", "--adapter-cache-mib", type=float, scale=2**20)
    add_setting(group, CacheSettings, "max_batch_size", "--hypernet-batch-size")
    add_setting(group, CacheSettings, "semantic_threshold", "--semantic-cache-threshold", type=float)
    add_setting(group, CacheSettings, "max_wait_ms", "--hypernet-batch-wait-ms")
    group.add_argument("--preload", metavar="FILE", help="a file of descriptions, one a line: " + ServiceSettings.__dataclass_fields__["preload"].metadata["help"]
                       + ", so clients such as `vllm bench serve --lora-modules` can name them")
    routing = p.add_argument_group("automatic adaptation for requests without a task_description")
    routing.add_argument("--router", metavar="LIBRARY", help=RouterSettings.__dataclass_fields__["library"].metadata["help"] + " (default: off)")
    add_router_options(routing)
    reliability = p.add_argument_group("when the adapter service dies")
    add_setting(reliability, ServiceSettings, "max_service_restarts")
    add_setting(reliability, ServiceSettings, "service_restart_window_s", "--service-restart-window-s", type=float)
    add_setting(reliability, ServiceSettings, "service_start_timeout_s", "--service-start-timeout-s", type=float)
    add_setting(p, ServiceSettings, "playground")
    p.set_defaults(run=run, passes_unknown_options=True)


def run(args: argparse.Namespace) -> int:
    from ..vllm_plugin.launch import serve
    from ..vllm_plugin.offline import resolve_model_and_hypernet

    base = settings_file_settings()
    model, hypernet = resolve_model_and_hypernet(args.model, args.hypernet or (base.hypernet if base else None))
    settings = replace(service_settings(args, hypernet, base), base_model=model)
    config = check_deployment(settings, model)
    serve(model, config.lora.rank, settings, [*args.unknown_options, *quiet_vllm_options(args.verbose, args.unknown_options)])
    return 0


def settings_file_settings() -> ServiceSettings | None:
    """The settings in the file `$T2L_VLLM_CONFIG` names (the same file a plain `vllm serve` reads), or None."""
    path = settings_file()
    if path is None:
        return None
    settings = load_settings_file(path)
    print(f"t2l_vllm: settings from {CONFIG_ENV}={path}; flags given here override them", flush=True)
    return settings


def service_settings(args: argparse.Namespace, hypernet: str, base: ServiceSettings | None = None) -> ServiceSettings:
    """The adapter service's settings: the flags the user gave, over `base` (the settings file), over
    the dataclasses' defaults. Each dataclass checks its own values."""
    base = base or ServiceSettings(hypernet)
    generator = generator_settings(args, base.generator)
    library = args.router or (base.router.library if base.router else None)
    router = router_settings(args, library, base.router) if library else None
    return replace(
        settings_from(args, ServiceSettings, base),
        hypernet=hypernet,
        generator=generator,
        cache=settings_from(args, CacheSettings, base.cache),
        router=router,
        preload=tuple(read_description_file(args.preload, "--preload")) if args.preload else base.preload,
    )
