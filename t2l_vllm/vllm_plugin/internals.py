"""Every place t2l_vllm reaches into vLLM beyond its documented plugin points, and nothing else.

The plugin points themselves (the general plugin `register`, the endpoint
plugin's `attach_router` / `init_state`, `LoRARequest`, the LoRA registry of
`OpenAIServingModels`) are used where they belong. What is here is private to
vLLM, so each use has a contract test in `tests/integration/test_vllm_contract.py`
that fails loudly when vLLM changes it. `tests/unit/test_vllm_boundary.py` holds
the rule that no other module assigns attributes on vLLM's objects or classes.

Three fixes of wrong behaviour, each applied only where its probe shows the bug
(`FIXES`); a fix whose target is gone fails start-up (`check_fixes`), because
serving on would leave a known wrong answer in place:

- CPU LoRA ops (`vllm/lora/ops/torch_ops/lora_ops.py`) gather adapter weights
  with `weights[lora_indices]`, where -1 marks a token without LoRA: Python
  indexing turns -1 into the last slot, so a base-model request batched beside
  adapter requests silently gets the last slot's adapter (upstream PRs #48421 and
  #49656). The fix: the shrink step writes zeros for -1 rows, so the expand step
  adds B @ 0 = 0 to them; rows with an adapter are computed exactly as before.
- vLLM's `vllm:lora_requests_info` gauge is labelled with the names of running and
  waiting adapters: with one adapter per description every description adds a
  series that is never removed (in prometheus_client's multiprocess mode, used
  with several API servers, not even `remove` can drop it). The fix counts
  generated adapters in those labels instead of naming them.
- vLLM's LoRA loader reads tensors with `safetensors.safe_open(...).get_tensor`,
  which keeps about 56 bytes per tensor for the life of the process (safetensors
  0.6 to 0.8 with torch 2.13): a worker that grows without bound under one adapter
  per description. The fix gives the loader a `safe_open` that reads the file whole.

And the reach-ins the plugin's serving needs: vLLM's request models and POST
routes (`served_request_models`, `routes_of`), its API-key check
(`key_accepted`), the moment it begins shutting an engine client down
(`notice_shutdown`), its engine arguments before the engine starts
(`check_engine_args_first`), the names of its engine core processes
(`engine_core_processes`), and its model construction on the meta device
(`lora_shapes`, for `t2l-vllm check`).
"""

from __future__ import annotations

import gc
import inspect
import logging
import multiprocessing
import tempfile
import threading
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import torch

from ..descriptions import GENERATED_NAME
from ..errors import ConfigError

logger = logging.getLogger(__name__)

TESTED_VLLM = "0.32."  # the release the contract tests were written against; the fixes are probed, not gated by it


# --- the CPU LoRA shrink op ------------------------------------------------------------------------
_PATCHED_FLAG = "_t2l_skips_no_lora_rows"


def masked_bgmv_shrink(original: Callable[..., None]) -> Callable[..., None]:
    """Wraps vLLM's `bgmv_shrink` so rows whose LoRA index is -1 come out as zeros."""

    def bgmv_shrink(inputs, lora_a_weights, output_tensor, lora_indices_tensor, scaling: float = 1.0):
        no_lora = lora_indices_tensor < 0
        if not bool(no_lora.any()):
            return original(inputs, lora_a_weights, output_tensor, lora_indices_tensor, scaling)
        original(inputs, lora_a_weights, output_tensor, lora_indices_tensor.clamp_min(0), scaling)
        rows = output_tensor.shape[0]
        mask = no_lora if no_lora.shape[0] == rows else no_lora[:rows]
        output_tensor[mask] = 0
        return None

    setattr(bgmv_shrink, _PATCHED_FLAG, True)
    return bgmv_shrink


def last_slot_leaks_into_no_lora_rows(shrink: Callable[..., None]) -> bool:
    """Whether `shrink` lets a -1 row pick up the last adapter slot (the 0.32 CPU bug)."""
    weights = torch.ones(2, 1, 3, 4)  # (slots, 1, rank, in)
    inputs = torch.ones(2, 4)
    out = torch.zeros(2, 3)
    shrink(inputs, weights, out, torch.tensor([0, -1]), 1.0)
    return bool(out[1].abs().sum() > 0)


def _shrink_patched() -> bool:
    from vllm.lora.ops.torch_ops import lora_ops

    return getattr(lora_ops.bgmv_shrink, _PATCHED_FLAG, False)


def _shrink_leaks() -> bool:
    from vllm.lora.ops.torch_ops import lora_ops

    return last_slot_leaks_into_no_lora_rows(lora_ops.bgmv_shrink)


def _patch_shrink() -> None:
    from vllm.lora.ops.torch_ops import lora_ops
    from vllm.lora.punica_wrapper import punica_cpu

    patched = masked_bgmv_shrink(lora_ops.bgmv_shrink)
    # sgmv_shrink calls bgmv_shrink through lora_ops' globals; PunicaWrapperCPU imported the name.
    lora_ops.bgmv_shrink = patched
    punica_cpu.bgmv_shrink = patched


# --- the lora_requests_info gauge ------------------------------------------------------------------
LORA_INFO_METRIC = "vllm:lora_requests_info"
ADAPTER_LIST_LABELS = ("running_lora_adapters", "waiting_lora_adapters")
_SUMMARISED_FLAG = "_t2l_summarises_generated_adapters"


def summarise_generated(adapters: str) -> str:
    """`native,t2l-<hex>,t2l-<hex>` -> `native,t2l-generated:2`: a label value drawn from a bounded set."""
    names = [n for n in adapters.split(",") if n]
    kept = [n for n in names if not GENERATED_NAME.match(n)]
    generated = len(names) - len(kept)
    return ",".join([*kept, f"t2l-generated:{generated}"] if generated else kept)


class _SummarisedLoRAInfo:
    """vLLM's lora_requests_info gauge, with generated adapter names counted rather than listed."""

    def __init__(self, gauge: Any) -> None:
        self._gauge = gauge

    def labels(self, **labels: Any) -> Any:
        for key in ADAPTER_LIST_LABELS:
            if isinstance(labels.get(key), str):
                labels[key] = summarise_generated(labels[key])
        return self._gauge.labels(**labels)


def _lora_info_summarised() -> bool:
    from vllm.v1.metrics.loggers import PrometheusStatLogger

    return getattr(PrometheusStatLogger.__init__, _SUMMARISED_FLAG, False)


def _lora_info_names_adapters() -> bool:
    """Whether vLLM's stat logger labels its LoRA gauge with the adapters' names (read from its source)."""
    from vllm.v1.metrics import loggers

    source = inspect.getsource(loggers)
    return "self.gauge_lora_info.labels(**lora_info_labels)" in source and all(label in source for label in ADAPTER_LIST_LABELS)


def _patch_lora_info() -> None:
    from vllm.v1.metrics.loggers import PrometheusStatLogger

    original = PrometheusStatLogger.__init__

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        if getattr(self, "gauge_lora_info", None) is not None:
            self.gauge_lora_info = _SummarisedLoRAInfo(self.gauge_lora_info)

    setattr(__init__, _SUMMARISED_FLAG, True)
    PrometheusStatLogger.__init__ = __init__


# --- the LoRA loader's safetensors -----------------------------------------------------------------
_WHOLE_FILE_FLAG = "_t2l_reads_whole_files"


class WholeFileSafeOpen:
    """`safetensors.safe_open(path, framework="pt")` as vLLM's LoRA loader uses it (a context manager
    with `keys()` and `get_tensor(name)`), reading the file once with `safetensors.torch.load`.

    Adapter files are small (a rank-16 q/v adapter of Llama-3.1-8B holds 6.8 M numbers: 14 MB in
    bfloat16), so reading them whole costs little that mapping them saves; it avoids get_tensor's
    per-tensor leak.
    """

    def __init__(self, filename: str, framework: str = "pt", device: str = "cpu") -> None:
        from safetensors.torch import load

        if framework not in ("pt", "torch"):
            raise ValueError(f"t2l_vllm's safe_open for vLLM's LoRA loader reads PyTorch tensors only, not {framework!r}.")
        with open(filename, "rb") as file:
            self._tensors = {name: tensor.to(device) for name, tensor in load(file.read()).items()}

    def __enter__(self) -> "WholeFileSafeOpen":
        return self

    def __exit__(self, *exc: object) -> None:
        self._tensors = {}

    def keys(self) -> list[str]:
        return sorted(self._tensors)  # as safe_open lists them

    def get_tensor(self, name: str) -> torch.Tensor:
        return self._tensors[name]


class _SafetensorsForLoRALoader:
    """The `safetensors` module as `vllm.lora.lora_model` sees it: `safe_open` replaced, the rest delegated."""

    def __init__(self, module: Any) -> None:
        self._module = module

    safe_open = WholeFileSafeOpen

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)


setattr(_SafetensorsForLoRALoader, _WHOLE_FILE_FLAG, True)


def bytes_kept_by_get_tensor(safe_open: Callable[..., Any], loads: int = 50, tensors: int = 8) -> int:
    """Python-heap bytes still held after `loads` reads of a small file through `safe_open(...).get_tensor`."""
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "probe.safetensors")
        save_file({f"t{i}": torch.zeros(2) for i in range(tensors)}, path)

        def read() -> None:
            with safe_open(path, framework="pt") as f:
                for name in f.keys():
                    f.get_tensor(name)

        for _ in range(5):
            read()
        gc.collect()
        tracing = tracemalloc.is_tracing()  # a caller's own tracing is left running
        if not tracing:
            tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for _ in range(loads):
                read()
            gc.collect()
            return tracemalloc.get_traced_memory()[0] - before
        finally:
            if not tracing:
                tracemalloc.stop()


def _loader_whole_file() -> bool:
    from vllm.lora import lora_model

    return getattr(lora_model.safetensors, _WHOLE_FILE_FLAG, False)


def _loader_leaks() -> bool:
    """Whether vLLM's loader reads through `safetensors.safe_open` and that keeps memory per tensor read."""
    import safetensors
    from vllm.lora import lora_model

    if "safetensors.safe_open(" not in inspect.getsource(lora_model.LoRAModel.from_local_checkpoint):
        return False
    return bytes_kept_by_get_tensor(safetensors.safe_open) > 50 * 8 * 16


def _patch_loader() -> None:
    from vllm.lora import lora_model

    lora_model.safetensors = _SafetensorsForLoRALoader(lora_model.safetensors)


# --- the fixes, applied where their bug shows --------------------------------------------------------
@dataclass(frozen=True)
class Fix:
    """A wrong behaviour of vLLM (or what it uses) that t2l_vllm corrects in every vLLM process."""

    name: str
    bug: str
    installed: Callable[[], bool]
    present: Callable[[], bool]  # the probe: raises ImportError / AttributeError when its target is gone
    apply: Callable[[], None]


FIXES = (
    Fix("cpu-lora-no-lora-rows", "on CPU, a base-model request batched beside adapters gets the last adapter slot's weights",
        _shrink_patched, _shrink_leaks, _patch_shrink),
    Fix("lora-info-labels", "vllm:lora_requests_info grows a series per generated adapter, never removed",
        _lora_info_summarised, _lora_info_names_adapters, _patch_lora_info),
    Fix("lora-loader-leak", "the LoRA loader keeps memory for every tensor of every adapter it loads",
        _loader_whole_file, _loader_leaks, _patch_loader),
)
_install_lock = threading.Lock()


def install_fixes() -> dict[str, str]:
    """Applies each fix whose bug its probe shows, once per process; {fix: what happened}. Never raises:
    vLLM would only log a failing plugin; `check_fixes` turns a missing target into a refusal to start."""
    outcome: dict[str, str] = {}
    with _install_lock:
        for fix in FIXES:
            try:
                if fix.installed():
                    outcome[fix.name] = "installed"
                elif fix.present():
                    fix.apply()
                    outcome[fix.name] = "installed"
                else:
                    outcome[fix.name] = "not needed"
            except (ImportError, AttributeError, OSError, TypeError) as err:
                outcome[fix.name] = f"target missing: {type(err).__name__}: {err}"
                logger.error("t2l_vllm: cannot apply the fix %s (%s): %s", fix.name, fix.bug, err)
    return outcome


def check_fixes() -> None:
    """Raises `ConfigError` if a fix cannot be applied in this process: its target in vLLM is gone, and
    serving would leave its bug in place. Call before serving (the endpoint plugin, the offline engine)."""
    missing = {name: what for name, what in install_fixes().items() if what.startswith("target missing")}
    if missing:
        detail = "; ".join(f"{next(f.bug for f in FIXES if f.name == name)} ({what})" for name, what in missing.items())
        raise ConfigError(
            f"t2l_vllm cannot correct vLLM here: {detail}. This vLLM differs from the one t2l_vllm was tested with "
            f"(vLLM {TESTED_VLLM}x, see tests/integration/test_vllm_contract.py); install the vLLM release in t2l_vllm's requirements."
        )


# --- what the endpoint plugin needs of vLLM's app and engine ------------------------------------------
_CHECKED_FLAG = "_t2l_checks_engine_args"


def check_engine_args_first(check: Callable[[Any], None]) -> None:
    """Makes `EngineArgs.create_engine_config` call `check(engine_args)` before it builds anything.

    vLLM loads general plugins once per process, while it builds its argument parser,
    before any options are parsed; the engine's config is the first thing made from
    them, before any engine process starts. Once per process.
    """
    from vllm.engine.arg_utils import EngineArgs

    original = EngineArgs.create_engine_config
    if getattr(original, _CHECKED_FLAG, False):
        return

    def create_engine_config(self: Any, *args: Any, **kwargs: Any) -> Any:
        check(self)
        return original(self, *args, **kwargs)

    setattr(create_engine_config, _CHECKED_FLAG, True)
    EngineArgs.create_engine_config = create_engine_config


def served_request_models() -> dict[str, type]:
    """The generation routes the plugin extends, with vLLM's request model for each."""
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.entrypoints.openai.completion.protocol import CompletionRequest
    from vllm.entrypoints.openai.responses.protocol import ResponsesRequest

    return {"/v1/chat/completions": ChatCompletionRequest, "/v1/completions": CompletionRequest, "/v1/responses": ResponsesRequest}


def routes_of(app: Any, method: str) -> dict[str, Any]:
    """vLLM's routes of one method by path, as its app holds them when endpoint plugins attach (FastAPI
    `APIRoute`s). The plugin reads a route's `endpoint` (or request handler) to call vLLM's own code
    from the route it puts in its place (a route of the same path and method replaces vLLM's)."""
    from fastapi.routing import APIRoute

    return {route.path: route for route in app.routes if isinstance(route, APIRoute) and method in route.methods}


def key_accepted(request: Any) -> bool:
    """Whether the request carries a key `--api-key` accepts (True when no key is set), by vLLM's own check,
    configured as vLLM configured it: the authentication middleware is rebuilt from the app's middleware list."""
    from vllm.entrypoints.serve.middleware.authenticate import AuthenticationMiddleware

    for middleware in request.app.user_middleware:
        if middleware.cls is AuthenticationMiddleware:
            return AuthenticationMiddleware(request.app, *middleware.args, **middleware.kwargs).verify_token(request.headers)
    return True


def notice_shutdown(engine_client: Any, stopping: threading.Event) -> None:
    """Sets `stopping` the moment vLLM calls `engine_client.shutdown` (on SIGTERM, SIGINT or a dead engine)."""
    shutdown = engine_client.shutdown

    def shutdown_noticed(*args: Any, **kwargs: Any) -> Any:
        stopping.set()
        return shutdown(*args, **kwargs)

    engine_client.shutdown = shutdown_noticed


ENGINE_PROCESS_PREFIX = "EngineCore"  # vLLM names them EngineCore, or EngineCore_DP<rank>


def engine_core_processes() -> list[BaseProcess]:
    """The engine core processes this process has started, by the name vLLM gives them."""
    return [p for p in multiprocessing.active_children() if p.name.startswith(ENGINE_PROCESS_PREFIX)]


def lora_shapes(model_dir: str, init_file: str) -> dict[str, list[int]]:
    """[in, out] of every LoRA target of every decoder layer, by the name an adapter gives it, from vLLM's
    own model class built on the meta device (no weights read or allocated, even at 7B shapes).

    The packed modules vLLM builds (`qkv_proj`, `gate_up_proj`) are split back into adapter names through
    the class's `packed_modules_mapping`, as vLLM's LoRA manager slices them: sub-module i gets
    `output_sizes[i]`; a module packed from one name (Phi-3's `qkv_proj`) gets them all. Initialises
    vLLM's distributed state, so call it in a process of its own (`model_shapes.py`).
    """
    from vllm.config import set_current_vllm_config
    from vllm.distributed.parallel_state import (
        destroy_distributed_environment,
        destroy_model_parallel,
        ensure_model_parallel_initialized,
        init_distributed_environment,
    )
    from vllm.engine.arg_utils import EngineArgs
    from vllm.model_executor.layers.linear import LinearBase
    from vllm.model_executor.model_loader.utils import initialize_model

    config = EngineArgs(
        model=model_dir, dtype="float32", skip_tokenizer_init=True, enable_lora=True, max_model_len=128
    ).create_engine_config()
    with set_current_vllm_config(config):
        init_distributed_environment(
            world_size=1, rank=0, local_rank=0, distributed_init_method=f"file://{init_file}", backend="gloo"
        )
        ensure_model_parallel_initialized(1, 1)  # groups depend on the model (an MoE has an expert group)
        try:
            with torch.device("meta"):
                model = initialize_model(config)
        finally:
            destroy_model_parallel()
            destroy_distributed_environment()
    packed = getattr(model, "packed_modules_mapping", {})
    shapes: dict[str, list[int]] = {}
    for name, module in model.named_modules():
        if ".layers." not in name or not isinstance(module, LinearBase):
            continue
        prefix, _, last = name.rpartition(".")
        parts = packed.get(last, [last])
        sizes = list(getattr(module, "output_sizes", None) or [module.output_size])
        if len(parts) == 1:
            sizes = [sum(sizes)]
        if len(parts) != len(sizes):
            raise ConfigError(f"{name}: packed from {parts} but has output sizes {sizes}")
        for part, size in zip(parts, sizes):
            shapes[f"{prefix}.{part}"] = [int(module.input_size), int(size)]
    return shapes
