"""Where t2l_vllm keeps files it builds; the one module that reads environment variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path


def cache_dir() -> Path:
    """`$T2L_VLLM_CACHE`, else `$XDG_CACHE_HOME/t2l_vllm`, else `~/.cache/t2l_vllm`."""
    if os.environ.get("T2L_VLLM_CACHE"):
        return Path(os.environ["T2L_VLLM_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "t2l_vllm"


CONFIG_ENV = "T2L_VLLM_CONFIG"


def settings_file() -> Path | None:
    """`$T2L_VLLM_CONFIG`: the settings file that `t2l-vllm serve` and a plain `vllm serve` both read; None if unset."""
    value = os.environ.get(CONFIG_ENV)
    return Path(value) if value else None


# vLLM on CPU as the tests, benchmarks and scripts start it, unless the environment says otherwise:
# the KV cache it reserves, in GiB (the tiny models here need far less than 1).
CPU_ENGINE_DEFAULTS = {"VLLM_CPU_KVCACHE_SPACE": "1"}


def with_cpu_engine_defaults(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of `env` (default: this process's environment) with `CPU_ENGINE_DEFAULTS` where it sets none:
    the environment of a vLLM process to start."""
    return {**CPU_ENGINE_DEFAULTS, **(os.environ if env is None else env)}


def set_cpu_engine_defaults() -> None:
    """`CPU_ENGINE_DEFAULTS` into this process's environment where it sets none: for an engine started in this process."""
    for name, value in CPU_ENGINE_DEFAULTS.items():
        os.environ.setdefault(name, value)
