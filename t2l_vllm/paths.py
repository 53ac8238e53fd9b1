"""Where t2l_vllm keeps files it builds; the one module that reads environment variables."""

from __future__ import annotations

import os
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
