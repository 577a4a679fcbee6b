"""The subset of transformers' ``CLIPTextModel`` that the bundled models use, in plain torch.

Token plus learned position embeddings, pre-norm transformer layers with causal self-attention and a
``quick_gelu`` MLP, and the final layer norm. Its ``forward(input_ids)`` returns ``(last_hidden_state,)``,
what the prompt encoder reads as ``text_encoder(ids)[0]``. Parameter names are those of the saved file
(``embeddings.token_embedding.weight``, ``encoder.layers.0.self_attn.q_proj.weight``, ...).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import Config


class Embeddings(nn.Module):
    def __init__(self, vocab: int, positions: int, dim: int):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab, dim)
        self.position_embedding = nn.Embedding(positions, dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.token_embedding(ids) + self.position_embedding.weight[: ids.shape[-1]]


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, dim = x.shape
        d = dim // self.heads
        q, k, v = (p(x).view(b, n, self.heads, d).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        # causal: a token sees itself and the tokens before it (no padding mask: the prompt encoder passes none)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=d**-0.5)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, dim))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        return self.fc2(h * torch.sigmoid(1.702 * h))  # quick_gelu


class EncoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int, eps: float):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(dim, eps=eps)
        self.self_attn = SelfAttention(dim, heads)
        self.layer_norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = MLP(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class Encoder(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        eps = float(c.layer_norm_eps)
        self.layers = nn.ModuleList(
            EncoderLayer(c.hidden_size, c.num_attention_heads, c.intermediate_size, eps)
            for _ in range(c.num_hidden_layers)
        )


class CLIPTextModel(nn.Module):
    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        c = config
        self.embeddings = Embeddings(c.vocab_size, c.max_position_embeddings, c.hidden_size)
        self.encoder = Encoder(c)
        self.final_layer_norm = nn.LayerNorm(c.hidden_size, eps=float(c.layer_norm_eps))

    def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor]:
        x = self.embeddings(input_ids)
        for layer in self.encoder.layers:
            x = layer(x)
        return (self.final_layer_norm(x),)
