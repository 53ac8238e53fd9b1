"""`t2l-vllm serve`: vLLM's OpenAI-compatible server, with a generated adapter per `task_description`.

Every option not listed here is vLLM's own (`--port`, `--api-key`, `--max-loras`,
`--max-cpu-loras`, `--tensor-parallel-size`, `--gpu-memory-utilization`, ...)
and is passed to vLLM unchanged. LoRA is switched on, with `--max-lora-rank` at
least the hypernetwork's rank.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from ..cache import CacheSettings
from ..descriptions import normalize_description
from ..errors import ConfigError, InvalidDescriptionError
from ..hypernet.checkpoint import load_checkpoint
from ..hypernet.config import HypernetConfig
from ..hypernet.shapes import check_shapes_fit, load_base_shapes
from ..router import TaskLibrary
from ..service.settings import ServiceSettings
from .common import add_generator_options, generator_settings, read_description_file
from .route import add_router_options, router_settings

_CACHE = CacheSettings()


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve", help="serve an OpenAI-compatible API with per-request generated adapters", description=__doc__, allow_abbrev=False
    )
    p.add_argument("--model", help="base model: local folder or hub id (default: the hypernetwork's base model)")
    add_generator_options(p)
    group = p.add_argument_group("adapter cache and batching")
    group.add_argument("--adapter-dir", help="folder for the generated PEFT folders vLLM loads (default: a new folder on /dev/shm)")
    group.add_argument("--adapter-cache-entries", type=int, default=_CACHE.max_entries, help="adapters kept ready (default: %(default)s)")
    group.add_argument("--adapter-cache-mib", type=float, default=_CACHE.max_bytes / 2**20, help="their total size bound in MiB (default: %(default)s)")
    group.add_argument("--hypernet-batch-size", type=int, default=_CACHE.max_batch_size, help="most descriptions in one hypernetwork pass (default: %(default)s)")
    group.add_argument("--semantic-cache-threshold", type=float, default=None, help="reuse a cached adapter whose description embeds within this cosine of a new one (default: off)")
    group.add_argument("--hypernet-batch-wait-ms", type=float, default=_CACHE.max_wait_ms, help="how long a pass waits for more descriptions (default: %(default)s)")
    group.add_argument("--preload", metavar="FILE", help="descriptions (one a line) generated at start-up and kept for the server's life; "
                       "their adapters' names are printed and listed in /v1/models, so clients such as `vllm bench serve --lora-modules` can name them")
    routing = p.add_argument_group("automatic adaptation for requests without a task_description")
    routing.add_argument("--router", metavar="LIBRARY", help="task library YAML (`starter`: the one shipped with t2l_vllm)")
    add_router_options(routing)
    p.add_argument("--playground", action=argparse.BooleanOptionalAction, default=ServiceSettings.playground,
                   help="serve the playground page at GET /t2l/playground, behind --api-key like every route (default: on)")
    p.set_defaults(run=run, passes_unknown_options=True)


def run(args: argparse.Namespace) -> int:
    from ..vllm_plugin.launch import serve
    from ..vllm_plugin.offline import resolve_model_and_hypernet

    model, hypernet = resolve_model_and_hypernet(args.model, args.hypernet)
    settings = service_settings(args, hypernet)
    config = check_before_vllm_starts(settings, model)
    serve(model, config.lora.rank, settings, args.unknown_options)
    return 0


def check_before_vllm_starts(settings: ServiceSettings, model: str) -> HypernetConfig:
    """Everything a bad flag or file can break, checked in seconds instead of after the engine's
    start (minutes on a large model): the hypernetwork's weights against their fingerprint and
    against the base model's shapes, the router library, and every preloaded description."""
    hypernet, _ = load_checkpoint(settings.hypernet)  # raises on altered, corrupt or mismatched weights
    config = hypernet.config
    del hypernet
    check_shapes_fit(config.base, load_base_shapes(model), list(config.lora.target_modules))
    if settings.router is not None:
        TaskLibrary.load(settings.router.library)
    for line, description in enumerate(settings.preload, 1):
        try:
            normalize_description(description, settings.generator.max_description_chars)
        except InvalidDescriptionError as err:
            raise ConfigError(f"`--preload`, description {line}: {err}") from None
    return config


def service_settings(args: argparse.Namespace, hypernet: str) -> ServiceSettings:
    """The adapter service's settings from the command line; each dataclass checks its own values."""
    return ServiceSettings(
        hypernet=hypernet,
        adapter_dir=args.adapter_dir,
        generator=generator_settings(args),
        cache=CacheSettings(
            max_entries=args.adapter_cache_entries,
            max_bytes=int(args.adapter_cache_mib * 2**20),
            max_batch_size=args.hypernet_batch_size,
            max_wait_ms=args.hypernet_batch_wait_ms,
            semantic_threshold=args.semantic_cache_threshold,
        ),
        router=replace(router_settings(args, args.router), max_description_chars=args.max_description_chars) if args.router else None,
        preload=tuple(read_description_file(args.preload, "--preload")) if args.preload else (),
        playground=args.playground,
    )
