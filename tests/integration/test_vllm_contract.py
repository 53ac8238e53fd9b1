"""Contract tests for the vLLM internals this project relies on (vLLM 0.32).

If one fails after a vLLM upgrade, read `t2l_vllm/vllm_plugin/internals.py` first.
"""

from __future__ import annotations

import inspect

import pytest
import vllm
from vllm.lora.ops.torch_ops import lora_ops
from vllm.lora.punica_wrapper import punica_cpu
from vllm.lora.request import LoRARequest

from t2l_vllm.vllm_plugin.internals import TESTED_VLLM, install_fixes, last_slot_leaks_into_no_lora_rows


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
    assert install_fixes()["cpu-lora-no-lora-rows"] == "installed"
    assert punica_cpu.bgmv_shrink is lora_ops.bgmv_shrink
    assert not last_slot_leaks_into_no_lora_rows(lora_ops.bgmv_shrink)


def test_sgmv_shrink_still_delegates_to_bgmv_shrink_by_module_global():
    assert "bgmv_shrink(" in inspect.getsource(lora_ops.sgmv_shrink)


def test_lora_request_takes_name_id_and_path_and_carries_a_content_id_to_the_engine():
    import msgspec

    from t2l_vllm.descriptions import adapter_int_id

    request = LoRARequest(lora_name="t2l-x", lora_int_id=7, lora_path="/tmp/x")
    assert (request.lora_name, request.lora_int_id, request.lora_path) == ("t2l-x", 7, "/tmp/x")
    content_id = adapter_int_id("t2l-" + "f" * 24)
    assert 2**32 <= content_id < 2**63
    sent = msgspec.msgpack.decode(msgspec.msgpack.encode(LoRARequest("t2l-y", content_id, "/tmp/y")), type=LoRARequest)
    assert sent.lora_int_id == content_id


def test_lora_info_labels_count_generated_adapters_instead_of_naming_them():
    from t2l_vllm.vllm_plugin.internals import summarise_generated

    generated = [f"t2l-{i:024x}" for i in range(3)]
    assert summarise_generated(",".join(["native", *generated])) == "native,t2l-generated:3"
    assert summarise_generated("native") == "native" and summarise_generated("") == ""


def test_the_stat_logger_vllm_builds_summarises_its_lora_info_gauge():
    from vllm.v1.metrics.loggers import PrometheusStatLogger

    assert install_fixes()["lora-info-labels"] == "installed"
    assert getattr(PrometheusStatLogger.__init__, "_t2l_summarises_generated_adapters", False)
    source = inspect.getsource(inspect.unwrap(PrometheusStatLogger.__init__.__closure__[0].cell_contents))
    assert "self.gauge_lora_info" in source and 'name="vllm:lora_requests_info"' in source


def test_vllm_still_labels_lora_info_with_adapter_names():
    from vllm.v1.metrics import loggers

    source = inspect.getsource(loggers)
    assert "self.gauge_lora_info.labels(**lora_info_labels)" in source
    assert "running_lora_adapters" in source and "waiting_lora_adapters" in source


def test_the_launcher_functions_t2l_serve_uses_exist():
    from vllm.entrypoints.cli.serve import ServeSubcommand
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
    from vllm.entrypoints.serve.utils.api_utils import cli_env_setup
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    args = make_arg_parser(FlexibleArgumentParser()).parse_args(["--model", "m", "--max-loras", "3"])
    assert args.max_loras == 3 and hasattr(args, "max_lora_rank") and hasattr(args, "api_server_count")
    for option in ("nnodes", "data_parallel_size", "data_parallel_size_local", "distributed_executor_backend", "data_parallel_backend"):
        assert hasattr(args, option), option
    assert callable(ServeSubcommand.cmd) and callable(validate_parsed_serve_args) and callable(cli_env_setup)


def test_api_servers_get_the_parsed_options_with_the_plugin_settings_on_them():
    """Several API servers are spawned with the launcher's `args`, which carry `args.t2l`."""
    from vllm.v1 import utils

    assert "run_server_worker(listen_address, sock, args" in inspect.getsource(utils.run_api_server_worker_proc)


def test_serving_models_keep_a_public_lora_registry():
    from vllm.entrypoints.openai.models.serving import OpenAIServingModels

    assert "self.lora_requests" in inspect.getsource(OpenAIServingModels.__init__)


def test_the_registry_refuses_a_generated_adapter_whose_id_a_served_lora_has(tmp_path):
    from types import SimpleNamespace

    from t2l_vllm.adapter_store import AdapterIdCollisionError, StoredAdapter
    from t2l_vllm.vllm_plugin.lora_registry import ServedLoRAs, lora_request

    native = StoredAdapter("native-lora", tmp_path / "a", 2**40, 1)
    models = SimpleNamespace(lora_requests={"native-lora": lora_request(native)})
    loras = ServedLoRAs(models)
    clash = StoredAdapter("t2l-clash", tmp_path / "b", 2**40, 1)
    with pytest.raises(AdapterIdCollisionError, match="native-lora"):
        loras.add(clash)
    assert "t2l-clash" not in loras
    fine = StoredAdapter("t2l-fine", tmp_path / "c", 2**40 + 1, 1)
    loras.add(fine)
    assert models.lora_requests["t2l-fine"].lora_int_id == 2**40 + 1
    loras.discard("t2l-fine")
    assert "t2l-fine" not in loras


def _bytes_kept(load, loads: int = 300) -> int:
    """Bytes Python still holds after `loads` calls of `load` (after a warm-up, with a collection).

    Only allocations made under `load` count: a traceback without this file's frames came from
    another thread of the test process (an engine's or a service link's), which the measurement
    must not charge to `load`.
    """
    import gc
    import tracemalloc

    for _ in range(20):
        load()
    gc.collect()
    tracemalloc.start(64)
    try:
        before = tracemalloc.take_snapshot()
        for _ in range(loads):
            load()
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    return sum(stat.size_diff for stat in after.compare_to(before, "traceback")
               if any(frame.filename == __file__ for frame in stat.traceback))


@pytest.fixture
def adapter_file(tmp_path):
    import torch
    from safetensors.torch import save_file

    path = tmp_path / "adapter_model.safetensors"
    save_file({f"base_model.model.layers.{i}.self_attn.q_proj.lora_A.weight": torch.randn(8, 64) for i in range(12)}, str(path))
    return str(path)


def _read_all(safe_open, path: str) -> dict:
    with safe_open(path, framework="pt") as f:
        return {name: f.get_tensor(name) for name in f.keys()}


def test_safetensors_get_tensor_still_keeps_memory_per_tensor(adapter_file):
    """The patch is needed: every `get_tensor` keeps some bytes for good (about 56 per tensor measured).

    When this starts failing, safetensors (or torch) fixed it and the patch can go.
    """
    import safetensors

    assert _bytes_kept(lambda: _read_all(safetensors.safe_open, adapter_file)) > 300 * 12 * 16


def test_whole_file_safe_open_reads_the_same_tensors_and_keeps_nothing(adapter_file):
    import safetensors
    import torch

    from t2l_vllm.vllm_plugin.internals import WholeFileSafeOpen

    ours, theirs = _read_all(WholeFileSafeOpen, adapter_file), _read_all(safetensors.safe_open, adapter_file)
    assert list(ours) == list(theirs) and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert _bytes_kept(lambda: _read_all(WholeFileSafeOpen, adapter_file)) < 4096


def test_vllm_lora_loader_reads_safetensors_through_its_module_global_safe_open():
    from vllm.lora import lora_model

    from t2l_vllm.vllm_plugin.internals import WholeFileSafeOpen

    assert "safetensors.safe_open(lora_tensor_path" in inspect.getsource(lora_model.LoRAModel.from_local_checkpoint)
    assert install_fixes()["lora-loader-leak"] == "installed"
    assert lora_model.safetensors.safe_open is WholeFileSafeOpen
    assert lora_model.safetensors.torch is __import__("safetensors.torch").torch  # the rest of the module is the real one


# --- the reach-ins of the endpoint plugin (internals.py) ---------------------------------------------
def test_a_fix_whose_target_is_gone_refuses_to_serve(monkeypatch):
    """A fake fault, named as one: a probe that cannot import its target, as after a vLLM upgrade."""
    from t2l_vllm.errors import ConfigError
    from t2l_vllm.vllm_plugin import internals

    def gone() -> bool:
        raise ImportError("No module named 'vllm.lora.ops.torch_ops'")

    broken = internals.Fix("cpu-lora-no-lora-rows", "a base request gets the last slot's adapter", lambda: False, gone, lambda: None)
    monkeypatch.setattr(internals, "FIXES", (broken,))
    assert internals.install_fixes()["cpu-lora-no-lora-rows"].startswith("target missing: ImportError")
    with pytest.raises(ConfigError, match="cannot correct vLLM here: a base request gets the last slot's adapter"):
        internals.check_fixes()


def test_each_fix_is_installed_because_its_probe_shows_the_bug():
    from t2l_vllm.vllm_plugin.internals import FIXES, install_fixes

    assert set(install_fixes().values()) == {"installed"}
    assert all(fix.installed() for fix in FIXES)


def test_vllm_serves_the_generation_routes_with_pydantic_request_models():
    from t2l_vllm.vllm_plugin.internals import served_request_models

    bodies = {"/v1/chat/completions": {"messages": [{"role": "user", "content": "hi"}]}, "/v1/completions": {"prompt": "hi"},
              "/v1/responses": {"input": "hi"}}
    for path, model in served_request_models().items():
        request = model.model_validate({"model": "m", **bodies[path]})
        copy = request.model_copy(update={"model": "t2l-x"})
        assert (copy.model, request.model) == ("t2l-x", "m"), path


def test_the_api_key_check_is_vllms_middleware_rebuilt_from_the_app():
    from fastapi import FastAPI
    from starlette.requests import Request
    from vllm.entrypoints.serve.middleware.authenticate import AuthenticationMiddleware

    from t2l_vllm.vllm_plugin.internals import key_accepted

    app = FastAPI()
    assert key_accepted(Request({"type": "http", "app": app, "headers": []}))  # no key configured
    app.add_middleware(AuthenticationMiddleware, tokens=["secret"])

    def request(key: str) -> Request:
        return Request({"type": "http", "app": app, "headers": [(b"authorization", f"Bearer {key}".encode())]})

    assert key_accepted(request("secret")) and not key_accepted(request("wrong"))


def test_the_async_engine_client_shuts_down_through_a_method_the_plugin_can_watch():
    import threading
    from types import SimpleNamespace

    from vllm.v1.engine.async_llm import AsyncLLM

    from t2l_vllm.vllm_plugin.internals import notice_shutdown

    assert callable(AsyncLLM.shutdown)
    calls = []
    client, stopping = SimpleNamespace(shutdown=lambda *a: calls.append(a)), threading.Event()
    notice_shutdown(client, stopping)
    client.shutdown(1)
    assert stopping.is_set() and calls == [(1,)]


def test_vllm_names_its_engine_core_processes_as_the_plugin_looks_for_them():
    from vllm.v1.engine import utils

    from t2l_vllm.vllm_plugin.internals import ENGINE_PROCESS_PREFIX

    assert f'name=f"{ENGINE_PROCESS_PREFIX}_DP{{global_index}}" if is_dp else "{ENGINE_PROCESS_PREFIX}"' in inspect.getsource(utils)


def test_vllm_makes_its_engine_config_from_the_engine_arguments_before_an_engine_starts(monkeypatch):
    """Where a plain `vllm serve` with $T2L_VLLM_CONFIG is checked (`check_engine_args_first`)."""
    from vllm.engine.arg_utils import EngineArgs

    from t2l_vllm.vllm_plugin.internals import check_engine_args_first

    monkeypatch.setattr(EngineArgs, "create_engine_config", EngineArgs.create_engine_config)  # restored after the test

    seen = []
    check_engine_args_first(seen.append)
    check_engine_args_first(seen.append)  # once per process: the second call adds nothing
    args = EngineArgs(model="m")
    with pytest.raises(Exception):  # noqa: B017 - "m" is no model; the check ran before vLLM looked
        args.create_engine_config()
    assert seen == [args]
    source = inspect.getsource(__import__("vllm.v1.engine.async_llm", fromlist=["AsyncLLM"]).AsyncLLM.from_engine_args)
    assert "create_engine_config" in source
