"""Tiny random-weight models of every decoder family t2l_vllm names, built here.

Each family keeps what makes its real `config.json` a shape family of its own
(grouped-query attention, Gemma-2's head_dim apart from hidden_size and its soft
caps, Qwen2's attention biases, Qwen3's q/k norms, Phi-3's fused projections,
Mixtral's experts, tied embeddings where the family ties them) at sizes that load
in a second: two layers, head_dim 64 (vLLM's CPU attention refuses 16). The
tokenizer is built here (bytes, no merges), so nothing is downloaded. Weights
are random and float32; a seed makes them the same on every machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# Scale of the random weights: larger than transformers' 0.02 so that a random
# model's logits are far apart and greedy decoding does not hinge on float rounding.
INITIALIZER_RANGE = 0.1
# Input embeddings are drawn far smaller: where they are tied to the output (Gemma
# also scales them by sqrt(hidden)), the input embedding left in the residual stream
# makes a random model repeat its last token whatever an adapter does (the tiny
# Gemma-2 did at 0.02).
EMBEDDING_STD = 0.002
# Noise on every 1-D parameter: transformers starts biases at zero and norm gains at
# one, which would leave Qwen2's attention biases and each family's norm convention untested.
VECTOR_NOISE = 0.1

# Sizes every tiny model shares; a family overrides what its real config does differently.
_COMMON: dict[str, Any] = {
    "num_hidden_layers": 2,
    "hidden_size": 256,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "intermediate_size": 512,
    "max_position_embeddings": 1024,
    "initializer_range": INITIALIZER_RANGE,
    "tie_word_embeddings": False,
    "torch_dtype": "float32",
}

# Family -> the config.json fields (beyond `_COMMON`) its real models have, named
# after the real model whose config each follows.
TINY_FAMILIES: dict[str, dict[str, Any]] = {
    # Llama-3.1-8B-Instruct: GQA 32/8, llama3 rope scaling, untied.
    "llama": {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "rope_theta": 500000.0,
        "rope_scaling": {
            "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 256,
        },
    },
    # Mistral-7B-Instruct-v0.2: GQA 32/8, no sliding window, untied.
    "mistral": {
        "model_type": "mistral",
        "architectures": ["MistralForCausalLM"],
        "rope_theta": 1000000.0,
        "sliding_window": None,
    },
    # Mixtral-8x7B-Instruct-v0.1: GQA 32/8, 8 experts of which 2 per token.
    "mixtral": {
        "model_type": "mixtral",
        "architectures": ["MixtralForCausalLM"],
        "num_local_experts": 4,
        "num_experts_per_tok": 2,
        "intermediate_size": 256,
        "rope_theta": 1000000.0,
    },
    # gemma-2b: one key/value head, head_dim 256 (here apart from hidden_size), tied.
    "gemma": {
        "model_type": "gemma",
        "architectures": ["GemmaForCausalLM"],
        "hidden_size": 192,
        "num_key_value_heads": 1,
        "hidden_act": "gelu_pytorch_tanh",
        "hidden_activation": "gelu_pytorch_tanh",
        "tie_word_embeddings": True,
    },
    # gemma-2-2b-it: GQA 8/4, head_dim 256 while hidden is 2304, soft caps, tied.
    "gemma2": {
        "model_type": "gemma2",
        "architectures": ["Gemma2ForCausalLM"],
        "hidden_size": 192,
        "hidden_activation": "gelu_pytorch_tanh",
        "query_pre_attn_scalar": 64,
        "attn_logit_softcapping": 5.0,  # 50 in the real model, whose attention logits are far larger
        "final_logit_softcapping": 30.0,
        "sliding_window": 4096,
        "tie_word_embeddings": True,
    },
    # Qwen2.5-0.5B-Instruct: GQA 14/2, biases on q/k/v, tied.
    "qwen2": {
        "model_type": "qwen2",
        "architectures": ["Qwen2ForCausalLM"],
        "head_dim": None,  # vLLM's Qwen2 derives it from hidden_size, as the real configs do
        "rope_theta": 1000000.0,
        "tie_word_embeddings": True,
    },
    # Qwen3-0.6B: GQA 16/8, head_dim 128 while hidden is 1024, q/k norms, tied.
    "qwen3": {
        "model_type": "qwen3",
        "architectures": ["Qwen3ForCausalLM"],
        "hidden_size": 192,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": True,
    },
    # Phi-3-medium-4k-instruct: GQA 40/10, fused qkv_proj and gate_up_proj, untied.
    "phi3": {
        "model_type": "phi3",
        "architectures": ["Phi3ForCausalLM"],
        "head_dim": None,  # vLLM's Phi-3 derives it from hidden_size, as the real configs do
        "sliding_window": None,
    },
}


def tiny_config(family: str, vocab_size: int, **special_ids: int) -> dict[str, Any]:
    """The config.json fields of a family's tiny model (raises KeyError naming the known families)."""
    if family not in TINY_FAMILIES:
        raise KeyError(f"no tiny model for family `{family}`; known: {sorted(TINY_FAMILIES)}")
    config = {**_COMMON, **TINY_FAMILIES[family], "vocab_size": vocab_size, **special_ids}
    return {k: v for k, v in config.items() if v is not None}


def byte_tokenizer():
    """256 byte tokens (no merges) after `<pad>`, `<s>` and `</s>`.

    Not the toy world's tokenizer: that one adds a token per toy task, so its
    vocabulary, and with it every tiny model's weights, would move with the toy world.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(("<pad>", "<s>", "</s>"))}
    for char in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[char] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def build_tiny_model(family: str, folder: str | Path, seed: int = 0) -> Path:
    """Writes a tiny random float32 model of `family`, with `byte_tokenizer()`, to `folder`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    tokenizer = byte_tokenizer()
    fields = tiny_config(
        family,
        len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = AutoConfig.for_model(**fields)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        model.get_input_embeddings().weight.normal_(0.0, EMBEDDING_STD)
        for parameter in model.parameters():
            if parameter.dim() == 1:
                parameter.add_(torch.randn_like(parameter) * VECTOR_NOISE)
    folder = Path(folder)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
