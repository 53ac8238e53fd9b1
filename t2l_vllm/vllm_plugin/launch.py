"""Starting vLLM's OpenAI-compatible server with the t2l_vllm endpoint plugin switched on.

vLLM 0.32's launcher functions are used as its `api_server` module's `main` uses
them; `tests/integration/test_vllm_contract.py` checks they are still there.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from ..errors import ConfigError
from .server import PLUGIN_NAME, ServeSettings


def serve(model: str, lora_rank: int, settings: ServeSettings, vllm_options: Sequence[str]) -> None:
    """Parses vLLM's own options, switches LoRA and the plugin on, and serves until stopped."""
    import uvloop
    from vllm.entrypoints.launchers.api_server.entry import run_server
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
    from vllm.entrypoints.serve.utils.api_utils import cli_env_setup
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    # Endpoint plugins load only when named in VLLM_PLUGINS; keep what the user named.
    named = [p for p in os.environ.get("VLLM_PLUGINS", "").split(",") if p]
    os.environ["VLLM_PLUGINS"] = ",".join(dict.fromkeys([*named, PLUGIN_NAME]))
    cli_env_setup()
    args = make_arg_parser(FlexibleArgumentParser(prog="t2l-vllm serve")).parse_args(["--model", model, *vllm_options])
    unsupported = [
        flag
        for flag, on in (
            ("--headless", getattr(args, "headless", False)),
            ("--api-server-count > 1", (getattr(args, "api_server_count", None) or 1) > 1),
            ("--data-parallel-size > 1", (getattr(args, "data_parallel_size", None) or 1) > 1),
        )
        if on
    ]
    if unsupported:
        raise ConfigError(f"t2l-vllm serve runs one API server; {', '.join(unsupported)} is not supported yet (run replicas instead).")
    args.enable_lora = True
    args.max_lora_rank = max(args.max_lora_rank or 0, lora_rank)
    args.t2l = settings  # read back by the endpoint plugin's init_state
    validate_parsed_serve_args(args)
    uvloop.run(run_server(args))
