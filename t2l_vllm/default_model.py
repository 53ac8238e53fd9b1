"""The embedded default: a tiny Llama base model and a hypernetwork for it, built offline.

Tests and the demo need a real base model that vLLM serves and transformers runs,
with no download. This module builds one deterministically (seeded weights, a
byte-level tokenizer made here, a chat template) plus an untrained M-variant
hypernetwork whose heads are randomly initialised, so different descriptions
already give different adapters. Everything lands in a versioned cache folder and
is built once.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .encoder import quiet_hf_progress
from .hypernet.checkpoint import save_checkpoint
from .hypernet.config import EncoderSettings, HypernetConfig, LoraSettings
from .hypernet.model import build_hypernet
from .hypernet.shapes import BaseModelShapes
from .paths import cache_dir

logger = logging.getLogger(__name__)

VERSION = "tiny-llama-v1"
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>")
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<s>' + message['role'] + '\\n' + message['content'] + '</s>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<s>assistant\\n' }}{% endif %}"
)
TINY_LLAMA = dict(
    architectures=["LlamaForCausalLM"],
    model_type="llama",
    hidden_size=256,
    intermediate_size=512,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,  # grouped-query attention: v_proj is narrower than q_proj
    head_dim=64,  # vLLM's CPU attention rejects small head sizes such as 16
    max_position_embeddings=2048,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    tie_word_embeddings=False,
    torch_dtype="float32",
)


@dataclass(frozen=True)
class DefaultPaths:
    base_model: Path
    hypernet: Path


def default_paths(build: bool = True) -> DefaultPaths:
    """Folders of the embedded default base model and hypernetwork, built if missing."""
    root = cache_dir() / VERSION
    paths = DefaultPaths(base_model=root / "base", hypernet=root / "hypernet")
    if build and not (root / "COMPLETE").is_file():
        _build_atomically(root)
    return paths


def _build_atomically(root: Path) -> None:
    """Builds into a temporary sibling and renames, so a crash never leaves half a model."""
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    try:
        build_default(tmp, final_root=root)
        (tmp / "COMPLETE").write_text(VERSION + "\n")
        try:
            os.rename(tmp, root)
        except OSError:  # another process finished first; theirs is identical
            if not (root / "COMPLETE").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def build_tokenizer():
    """A byte-level tokenizer with no merges: 256 byte tokens plus three special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_chars = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in sorted(byte_chars):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token=None
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_default(root: Path, final_root: Path | None = None) -> DefaultPaths:
    """Writes the tiny base model and its hypernetwork under `root`.

    `final_root` is where `root` will be renamed to; the hypernetwork names its base
    model by that final path.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    paths = DefaultPaths(base_model=root / "base", hypernet=root / "hypernet")
    tokenizer = build_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **{k: v for k, v in TINY_LLAMA.items() if k not in ("architectures", "model_type", "torch_dtype")},
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config).float().eval()
    with quiet_hf_progress():
        model.save_pretrained(paths.base_model)
    tokenizer.save_pretrained(paths.base_model)
    (paths.base_model / "generation_config.json").write_text(
        json.dumps({"bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id}) + "\n"
    )

    shapes = BaseModelShapes.from_hf_config(config.to_dict(), name=str((final_root or root) / "base"))
    hyper_config = HypernetConfig(
        base=shapes,
        variant="M",
        latent_size=64,
        head_in_size=128,
        lora=LoraSettings(rank=8, alpha=16.0, use_rslora=True, target_modules=("q_proj", "v_proj")),
        encoder=EncoderSettings(),
        head_init="random",
    )
    save_checkpoint(build_hypernet(hyper_config, seed=0), paths.hypernet)
    logger.info("built the embedded default under %s", root)
    return paths
