"""The embedded default: the toy world's trained base model and its trained T2L hypernetwork.

Both ship inside the package (`assets/toy_default/`): the base model was trained
by `t2l-vllm train base` on the 70 tasks of the compositional toy world (from
scratch on an earlier 48-task world, then grown with `--init-from`), the
hypernetwork by T2L SFT on its 62 training tasks in
`python -m t2l_vllm.toy.reproduction` (docs/toy-reproduction.md says how, and how well). The base
model answers a user message with the toy task's output alone, but only an
adapter tells it which task: that is what the hypernetwork generates from a
description, also for the 8 held-out tasks it never trained on.

A hypernetwork names its base model by path, and the package's own folder is
only known at run time, so on first use the hypernetwork is written into a
versioned cache folder with its base named by the absolute path of the shipped
base model. The base model itself is read where it ships.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from .paths import cache_dir
from .strength import STRENGTH_FILE

logger = logging.getLogger(__name__)

VERSION = "toy-v6"
ASSETS = Path(__file__).parent / "assets" / "toy_default"
# The KV cache an engine of the embedded base model reserves unless the user names a size. Without one,
# vLLM reserves `gpu_memory_utilization` (0.92 in vLLM 0.32) of the memory: a GPU's, and on CPU the host's
# RAM, which the adapter service and its folders share (measured on a 24 GiB machine: a 21.4 GiB worker for
# this 0.56M-parameter model, 180 MB left to everything else).
# The toy model keeps 1.5 KiB a token in vLLM's bfloat16 (3 layers x K and V x 128), so this holds
# 349,000 tokens (vLLM's own count), 170 sequences of its longest.
KV_CACHE_BYTES = 512 * 2**20


@dataclass(frozen=True)
class DefaultPaths:
    base_model: Path
    hypernet: Path


def default_paths(build: bool = True) -> DefaultPaths:
    """Folders of the embedded default base model and hypernetwork, installed if missing.

    The cache folder is named by the package's location and the shipped
    hypernetwork's fingerprint: two installs never share a hypernetwork that names
    the other's base model, and new weights at the same place are installed anew.
    """
    from .hypernet.checkpoint import load_config

    key = f"{ASSETS.resolve()}\n{load_config(ASSETS / 'hypernet')[1]}"
    root = cache_dir() / f"{VERSION}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    paths = DefaultPaths(base_model=ASSETS / "base", hypernet=root / "hypernet")
    if build and not (root / "COMPLETE").is_file():
        _install_atomically(root)
    return paths


def engine_defaults(model: str, given: Mapping[str, object]) -> dict[str, int]:
    """vLLM engine options that an engine of `model` gets because `given` (the user's options, by vLLM's
    names) lacks them or leaves them None: for the embedded base model, its KV cache's size. On CPU
    `VLLM_CPU_KVCACHE_SPACE` still wins, since vLLM reads it over both."""
    defaults = {"kv_cache_memory_bytes": KV_CACHE_BYTES} if Path(model).resolve() == (ASSETS / "base").resolve() else {}
    return {option: value for option, value in defaults.items() if given.get(option) is None}


def _install_atomically(root: Path) -> None:
    """Installs into a temporary sibling and renames, so a crash never leaves half a checkpoint."""
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    try:
        install_hypernet(tmp / "hypernet")
        (tmp / "COMPLETE").write_text(VERSION + "\n")
        try:
            os.rename(tmp, root)
        except OSError:  # another process finished first; theirs is identical
            if not (root / "COMPLETE").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def install_hypernet(folder: Path) -> None:
    """Writes the shipped hypernetwork to `folder`, naming the shipped base model by absolute path."""
    from .hypernet.checkpoint import load_checkpoint, load_encoder_weights, save_checkpoint
    from .hypernet.model import build_hypernet

    shipped, _ = load_checkpoint(ASSETS / "hypernet")
    config = shipped.config.replace(base=replace(shipped.config.base, name=str(ASSETS / "base")))
    hypernet = build_hypernet(config)
    hypernet.load_state_dict(shipped.state_dict())
    save_checkpoint(hypernet, folder, load_encoder_weights(ASSETS / "hypernet", config))
    shutil.copy(ASSETS / "hypernet" / STRENGTH_FILE, folder / STRENGTH_FILE)
    shutil.copy(ASSETS / "hypernet" / "examples.json", folder / "examples.json")  # the playground's hints (vllm_plugin/playground.py)
    logger.info("installed the embedded default hypernetwork into %s", folder)
