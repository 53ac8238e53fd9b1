"""A small encoder built the way gte-large-en-v1.5's remote code ("new-impl") is built.

What matters to loading is reproduced, written here from the architecture's
published structure: rotary positions whose tables (`inv_freq`, `cos_cached`,
`sin_cached`) and the `position_ids` range are buffers made in `__init__` with
`persistent=False` (so a saved checkpoint does not hold them), one packed
q/k/v projection, post-LayerNorm blocks with a gated MLP, and a forward that
builds its attention mask with `self.get_extended_attention_mask`, a method
transformers 5 no longer has. `_init_weights` knows only linear, embedding and
norm layers, as gte's does. This file ships as remote code in a saved folder,
so it imports nothing from t2l_vllm.
"""

import math

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_outputs import BaseModelOutput

from .configuration_gte_like import GteLikeConfig


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


class GteLikeRotary(nn.Module):
    """cos/sin tables for every position up to `max_positions`, made once in __init__."""

    def __init__(self, head_dim: int, max_positions: int, base: float) -> None:
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        angles = torch.outer(torch.arange(max_positions, dtype=torch.float32), inv_freq)  # (positions, head_dim / 2)
        table = torch.cat((angles, angles), dim=-1)  # (positions, head_dim)
        self.register_buffer("cos_cached", table.cos(), persistent=False)
        self.register_buffer("sin_cached", table.sin(), persistent=False)


class GteLikeEmbeddings(nn.Module):
    def __init__(self, config: GteLikeConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        head_dim = config.hidden_size // config.num_attention_heads
        self.rotary_emb = GteLikeRotary(head_dim, config.max_position_embeddings, config.rope_theta)
        self.register_buffer("position_ids", torch.arange(config.max_position_embeddings), persistent=False)

    def forward(self, input_ids, token_type_ids):
        length = input_ids.shape[1]
        positions = self.position_ids[:length]  # an index: garbage here is the IndexError of the released model
        hidden = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        cos = self.rotary_emb.cos_cached[positions][None, :, None, :]  # (1, T, 1, head_dim)
        sin = self.rotary_emb.sin_cached[positions][None, :, None, :]
        return self.LayerNorm(hidden), (cos, sin)


class GteLikeAttention(nn.Module):
    def __init__(self, config: GteLikeConfig) -> None:
        super().__init__()
        self.heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.qkv_proj = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden, rope, mask):
        batch, length, _ = hidden.shape
        q, k, v = self.qkv_proj(hidden).view(batch, length, 3, self.heads, self.head_dim).unbind(2)  # (B, T, H, D) each
        cos, sin = rope
        q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim) + mask  # (B, H, T, T)
        context = scores.softmax(-1) @ v
        return self.o_proj(context.transpose(1, 2).reshape(batch, length, -1))


class GteLikeGatedMLP(nn.Module):
    def __init__(self, config: GteLikeConfig) -> None:
        super().__init__()
        self.intermediate_size = config.intermediate_size
        self.up_gate_proj = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size)
        self.act = ACT2FN[config.hidden_act]

    def forward(self, hidden):
        up, gate = self.up_gate_proj(hidden).split(self.intermediate_size, dim=-1)
        return self.down_proj(self.act(gate) * up)


class GteLikeLayer(nn.Module):
    """Post-LN: each sub-block's output is added to its input, then normalised."""

    def __init__(self, config: GteLikeConfig) -> None:
        super().__init__()
        self.attention = GteLikeAttention(config)
        self.mlp = GteLikeGatedMLP(config)
        self.attn_ln = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp_ln = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden, rope, mask):
        hidden = self.attn_ln(hidden + self.attention(hidden, rope, mask))
        return self.mlp_ln(hidden + self.mlp(hidden))


class GteLikeEncoder(nn.Module):
    def __init__(self, config: GteLikeConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(GteLikeLayer(config) for _ in range(config.num_hidden_layers))


class GteLikePreTrainedModel(PreTrainedModel):
    config_class = GteLikeConfig
    base_model_prefix = "gte_like"

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(0.0, std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, nn.LayerNorm):
            module.weight.data.fill_(1.0)
            module.bias.data.zero_()


class GteLikeModel(GteLikePreTrainedModel):
    def __init__(self, config: GteLikeConfig) -> None:
        super().__init__(config)
        self.embeddings = GteLikeEmbeddings(config)
        self.encoder = GteLikeEncoder(config)
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.word_embeddings

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, **kwargs):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        mask = self.get_extended_attention_mask(attention_mask, input_ids.shape)  # (B, 1, 1, T), as gte does
        hidden, rope = self.embeddings(input_ids, token_type_ids)
        for layer in self.encoder.layer:
            hidden = layer(hidden, rope, mask)
        return BaseModelOutput(last_hidden_state=hidden)
