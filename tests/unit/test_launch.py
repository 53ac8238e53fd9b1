"""Launch shapes `t2l-vllm serve` refuses before vLLM starts, with a message that says what to set."""

from __future__ import annotations

import subprocess
import sys

import pytest

from t2l_vllm.service.settings import ServiceSettings
from t2l_vllm.vllm_plugin.launch import check_adapter_dir_reaches_every_node


def parsed(*options: str):
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    return make_arg_parser(FlexibleArgumentParser()).parse_args(["--model", "m", *options])


@pytest.mark.parametrize(
    "options,fragment",
    [
        (["--nnodes", "2"], "--nnodes 2"),
        (["--data-parallel-size", "4", "--data-parallel-size-local", "2"], "--data-parallel-size-local 2 < --data-parallel-size 4"),
        (["--distributed-executor-backend", "ray"], "--distributed-executor-backend ray"),
        (["--data-parallel-backend", "ray"], "--data-parallel-backend ray"),
    ],
)
def test_a_launch_across_nodes_needs_an_explicit_adapter_dir(options, fragment):
    from t2l_vllm.errors import ConfigError

    args = parsed(*options)
    with pytest.raises(ConfigError, match=f"{fragment}.*--adapter-dir"):
        check_adapter_dir_reaches_every_node(args, ServiceSettings("h"))
    check_adapter_dir_reaches_every_node(args, ServiceSettings("h", adapter_dir="/shared/adapters"))


@pytest.mark.parametrize("options", [[], ["--api-server-count", "4"], ["--data-parallel-size", "2"], ["--tensor-parallel-size", "2"]])
def test_one_node_shapes_need_no_adapter_dir(options):
    check_adapter_dir_reaches_every_node(parsed(*options), ServiceSettings("h"))


def test_the_cli_refuses_a_multi_node_launch_before_vllm_starts_with_one_line(default_paths):
    result = subprocess.run([sys.executable, "-m", "t2l_vllm", "serve", "--nnodes", "2"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "--adapter-dir" in result.stderr and "Traceback" not in result.stderr, result.stderr[-2000:]
