"""Contract tests for the vLLM internals this project relies on (vLLM 0.32).

If one fails after a vLLM upgrade, read `t2l_vllm/vllm_plugin/internals.py` first.
"""

from __future__ import annotations

import inspect

import vllm
from vllm.lora.ops.torch_ops import lora_ops
from vllm.lora.punica_wrapper import punica_cpu
from vllm.lora.request import LoRARequest

from t2l_vllm.vllm_plugin.internals import TESTED_VLLM, install_cpu_lora_fix, last_slot_leaks_into_no_lora_rows


def test_vllm_is_the_tested_release():
    assert vllm.__version__.startswith(TESTED_VLLM)


def test_unpatched_cpu_shrink_still_has_the_negative_index_bug():
    """The fix is needed: vLLM's own op lets a -1 row read the last adapter slot.

    When this starts failing, vLLM fixed the op upstream and the patch can go.
    """
    original = inspect.unwrap(lora_ops.bgmv_shrink)
    while getattr(original, "_t2l_skips_no_lora_rows", False):
        original = original.__closure__[0].cell_contents
    assert last_slot_leaks_into_no_lora_rows(original)


def test_patched_shrink_zeroes_no_lora_rows_and_keeps_the_others():
    assert install_cpu_lora_fix()
    assert punica_cpu.bgmv_shrink is lora_ops.bgmv_shrink
    assert not last_slot_leaks_into_no_lora_rows(lora_ops.bgmv_shrink)


def test_sgmv_shrink_still_delegates_to_bgmv_shrink_by_module_global():
    assert "bgmv_shrink(" in inspect.getsource(lora_ops.sgmv_shrink)


def test_lora_request_takes_name_id_and_path():
    request = LoRARequest(lora_name="t2l-x", lora_int_id=7, lora_path="/tmp/x")
    assert (request.lora_name, request.lora_int_id, request.lora_path) == ("t2l-x", 7, "/tmp/x")


def test_lora_info_gauge_is_pruned_to_the_newest_series():
    from prometheus_client import CollectorRegistry, Gauge

    from t2l_vllm.vllm_plugin.internals import LORA_INFO_METRIC, prune_lora_info_series

    registry = CollectorRegistry()
    gauge = Gauge(LORA_INFO_METRIC, "test", ["max_lora", "waiting_lora_adapters", "running_lora_adapters"], registry=registry)
    for i in range(5):
        gauge.labels("2", "", f"t2l-{i}").set(100 + i)
    assert prune_lora_info_series(keep=1, registry=registry) == 4
    assert [s.labels["running_lora_adapters"] for s in registry.collect().__next__().samples] == ["t2l-4"]


def test_vllm_still_labels_lora_info_with_adapter_names():
    from vllm.v1.metrics import loggers

    source = inspect.getsource(loggers)
    assert 'name="vllm:lora_requests_info"' in source and "running_lora_adapters" in source


def test_the_launcher_functions_t2l_serve_uses_exist():
    from vllm.entrypoints.launchers.api_server.entry import run_server
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
    from vllm.entrypoints.serve.utils.api_utils import cli_env_setup
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    args = make_arg_parser(FlexibleArgumentParser()).parse_args(["--model", "m", "--max-loras", "3"])
    assert args.max_loras == 3 and hasattr(args, "max_lora_rank") and hasattr(args, "api_server_count")
    assert callable(run_server) and callable(validate_parsed_serve_args) and callable(cli_env_setup)


def test_serving_models_keep_a_public_lora_registry_and_id_counter():
    from vllm.entrypoints.openai.models.serving import OpenAIServingModels

    source = inspect.getsource(OpenAIServingModels.__init__)
    assert "self.lora_requests" in source and "self.lora_id_counter" in source
