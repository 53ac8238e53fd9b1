"""Starting vLLM's OpenAI-compatible server with the t2l_vllm endpoint plugin switched on.

`t2l-vllm serve` parses vLLM's own options with vLLM's parser, adds what the
plugin needs, and hands over to the dispatcher of `vllm serve`
(`ServeSubcommand.cmd`), so every shape vLLM launches works as it does there:
one API server, several (`--api-server-count`, or one per data-parallel rank by
default), headless engine nodes. `tests/integration/test_vllm_contract.py` checks
that the vLLM functions used here are still there.
"""

from __future__ import annotations

import os
from argparse import Namespace
from collections.abc import Sequence

from ..adapter_store import remove_deployment_store
from ..default_model import engine_defaults
from ..errors import ConfigError, EngineDiedError
from ..service.client import service_socket_path
from ..service.settings import ServiceSettings
from .engine_exits import EngineExits
from .configured import CHECKED_ENV, PLUGIN_NAME


def serve(model: str, lora_rank: int, settings: ServiceSettings, vllm_options: Sequence[str]) -> None:
    """Parses vLLM's own options, switches LoRA and the plugin on, and serves until stopped.

    Raises `EngineDiedError` if vLLM's engine ended on its own, so the command exits non-zero.
    """
    from vllm.entrypoints.cli.serve import ServeSubcommand
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
    from vllm.entrypoints.serve.utils.api_utils import cli_env_setup
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    # Endpoint plugins load only when named in VLLM_PLUGINS; keep what the user named.
    named = [p for p in os.environ.get("VLLM_PLUGINS", "").split(",") if p]
    os.environ["VLLM_PLUGINS"] = ",".join(dict.fromkeys([*named, PLUGIN_NAME]))
    os.environ[CHECKED_ENV] = "1"  # the CLI checked these settings, flags included (`check_deployment`)
    cli_env_setup()
    args = make_arg_parser(FlexibleArgumentParser(prog="t2l-vllm serve")).parse_args(["--model", model, *vllm_options])
    vars(args).update(engine_defaults(model, vars(args)))
    check_adapter_dir_reaches_every_node(args, settings)
    args.enable_lora = True
    args.max_lora_rank = max(args.max_lora_rank or 0, lora_rank)
    args.t2l = settings  # travels to every API server process; read back by the endpoint plugin's init_state
    args.t2l_engine_exits = engine_exits = EngineExits()  # filled in by the endpoint plugin of an API server in this process
    validate_parsed_serve_args(args)
    try:
        ServeSubcommand.cmd(args)
    except RuntimeError as err:  # vLLM's launcher of several API servers raises when one of its processes dies
        raise EngineDiedError(
            f"vLLM stopped the whole deployment because one of its processes ended: {err}. vLLM does that when an API "
            "server or an engine core dies (a SIGKILL, the out-of-memory killer: see `dmesg`)."
        ) from err
    finally:  # the deployment ends with this process: what a service given up on left goes too
        remove_deployment_store(settings.adapter_dir, str(service_socket_path(f"serve-{os.getpid()}")), os.getpid())
    if (failure := engine_exits.failure()) is not None:  # vLLM returns normally when a lone API server's engine dies
        raise EngineDiedError(failure)
    # vLLM returns without a failure only when asked to stop; its last lines are its own shutdown logs.
    print("t2l-vllm serve: stopped as asked (SIGTERM or SIGINT): requests in flight were finished, adapter folders removed.", flush=True)


def nodes_reason(args: Namespace) -> str | None:
    """Why this launch may put engine workers on other nodes, or None for one node."""
    if (getattr(args, "nnodes", None) or 1) > 1:
        return f"--nnodes {args.nnodes}"
    local, total = getattr(args, "data_parallel_size_local", None), getattr(args, "data_parallel_size", None) or 1
    if local is not None and local < total:
        return f"--data-parallel-size-local {local} < --data-parallel-size {total}"
    for option in ("distributed_executor_backend", "data_parallel_backend"):
        if getattr(args, option, None) == "ray":
            return f"--{option.replace('_', '-')} ray"
    return None


def check_adapter_dir_reaches_every_node(args: Namespace, settings: ServiceSettings) -> None:
    """Refuses a launch that spans nodes unless the adapter folder is named explicitly.

    vLLM's workers load an adapter from the folder path in its LoRARequest; the
    default folder (/dev/shm) exists on this node only, and a worker on another
    node that cannot read it kills its engine.
    """
    reason = nodes_reason(args)
    if reason is not None and settings.adapter_dir is None:
        raise ConfigError(
            f"this launch may run vLLM workers on other nodes ({reason}), which load generated adapters "
            "by folder path: pass `--adapter-dir` naming a folder every node reads at the same path "
            "(a shared filesystem such as NFS), or run one replica per node."
        )
