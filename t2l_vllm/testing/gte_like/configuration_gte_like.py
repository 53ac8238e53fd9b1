"""Config of a small encoder with gte-large-en-v1.5's structure (see `modeling_gte_like.py`).

This file ships as remote code inside a saved model folder (`auto_map`), so it
imports nothing from t2l_vllm.
"""

from transformers import PretrainedConfig


class GteLikeConfig(PretrainedConfig):
    model_type = "gte_like"

    def __init__(
        self,
        vocab_size: int = 30528,
        hidden_size: int = 64,
        num_hidden_layers: int = 2,
        num_attention_heads: int = 4,
        intermediate_size: int = 128,
        hidden_act: str = "gelu",
        max_position_embeddings: int = 512,
        type_vocab_size: int = 2,
        layer_norm_eps: float = 1e-12,
        rope_theta: float = 160000.0,
        pad_token_id: int = 0,
        initializer_range: float = 0.02,
        **kwargs,
    ) -> None:
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.type_vocab_size = type_vocab_size
        self.layer_norm_eps = layer_norm_eps
        self.rope_theta = rope_theta
        self.initializer_range = initializer_range
        super().__init__(pad_token_id=pad_token_id, **kwargs)
