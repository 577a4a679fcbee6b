"""The subset of diffusers' ``UNet2DConditionModel`` that the bundled models use, in plain torch.

Same module tree and parameter names as diffusers (``down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q``,
...), so the same safetensors file loads into it unchanged. What it implements is exactly what
:func:`..support.unet_refusal` accepts: ``DownBlock2D`` / ``CrossAttnDownBlock2D`` down blocks, the
``UNetMidBlock2DCrossAttn`` mid block, ``UpBlock2D`` / ``CrossAttnUpBlock2D`` up blocks, SiLU resnets with the
"default" time-embedding norm, positional (sinusoidal) timesteps, conv (not linear) attention projections,
GEGLU feed-forwards and torch's scaled-dot-product attention. Each forward mirrors the diffusers one it
replaces, step for step, so float32 outputs agree to rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import Config


@dataclass
class UNetOutput:
    """What diffusers' UNet returns (``.sample``), so callers that read ``net(...).sample`` work on either."""

    sample: torch.Tensor


def timestep_embedding(t: torch.Tensor, dim: int, flip_sin_to_cos: bool, shift: float) -> torch.Tensor:
    """diffusers' ``get_timestep_embedding`` (max period 10000, scale 1), float32 whatever the model's dtype."""
    half = dim // 2
    exponent = -math.log(10000) * torch.arange(0, half, dtype=torch.float32, device=t.device) / (half - shift)
    emb = t[:, None].float() * torch.exp(exponent)[None, :]
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=-1)
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    if dim % 2 == 1:
        emb = F.pad(emb, (0, 1, 0, 0))
    return emb


class TimestepEmbedding(nn.Module):
    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class ResnetBlock2D(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, temb_ch: int, groups: int, eps: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch, eps=eps)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb_ch, out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch, eps=eps)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        # a 1x1 shortcut only where the channel count changes (diffusers' use_in_shortcut default)
        self.conv_shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return x + h  # output_scale_factor is 1 (checked)


class Attention(nn.Module):
    """Multi-head attention with bias-free q/k/v and a biased output projection (``to_out.0``)."""

    def __init__(self, dim: int, context_dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim, dim, bias=False)
        self.to_v = nn.Linear(context_dim, dim, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim), nn.Dropout(0.0)])

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        d = k.shape[-1] // self.heads
        q, k, v = (a.view(b, -1, self.heads, d).transpose(1, 2) for a in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2).reshape(b, -1, self.heads * d).to(q.dtype)
        return self.to_out[0](out)


class GEGLU(nn.Module):
    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.proj = nn.Linear(dim, inner * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, gate = self.proj(x).chunk(2, dim=-1)
        return h * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        # net.0 the GEGLU, net.1 dropout (no weights), net.2 the output projection: diffusers' indices
        self.net = nn.ModuleList([GEGLU(dim, 4 * dim), nn.Dropout(0.0), nn.Linear(4 * dim, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net[2](self.net[0](x))


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim: int, context_dim: int, heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, context_dim, heads)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = self.attn1(h, h) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class Transformer2DModel(nn.Module):
    """GroupNorm, 1x1 conv in, transformer blocks over the H*W tokens, 1x1 conv out, residual."""

    def __init__(self, ch: int, context_dim: int, heads: int, layers: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, ch, eps=1e-6)  # diffusers' fixed eps here, not the config's norm_eps
        self.proj_in = nn.Conv2d(ch, ch, 1)
        self.transformer_blocks = nn.ModuleList(BasicTransformerBlock(ch, context_dim, heads) for _ in range(layers))
        self.proj_out = nn.Conv2d(ch, ch, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        y = self.proj_in(self.norm(x))
        c = y.shape[1]
        y = y.permute(0, 2, 3, 1).reshape(b, h * w, c)
        for block in self.transformer_blocks:
            y = block(y, context)
        y = y.reshape(b, h, w, c).permute(0, 3, 1, 2).contiguous()
        return self.proj_out(y) + x


class Downsample2D(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest 2x (or to the skip connection's size), then a 3x3 conv: diffusers' Upsample2D without its
    branch on batch >= 64 (a contiguous() call that changes no value)."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
        if size is None:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        else:
            x = F.interpolate(x, size=size, mode="nearest")
        return self.conv(x)


class DownBlock(nn.Module):
    """``DownBlock2D`` (no ``attentions``) or ``CrossAttnDownBlock2D``: resnets (each followed by its
    transformer), then an optional downsampler; every stage's output is kept for the skip connections."""

    def __init__(self, in_ch, out_ch, temb_ch, layers, attn: dict | None, down: bool, groups, eps):
        super().__init__()
        # attentions before resnets: diffusers' registration order, so state_dict() lists tensors as it does
        if attn is not None:
            self.attentions = nn.ModuleList(Transformer2DModel(out_ch, groups=groups, **attn) for _ in range(layers))
        self.resnets = nn.ModuleList(
            ResnetBlock2D(in_ch if i == 0 else out_ch, out_ch, temb_ch, groups, eps) for i in range(layers)
        )
        self.downsamplers = nn.ModuleList([Downsample2D(out_ch)]) if down else None

    def forward(self, x, temb, context):
        states = []
        attns = getattr(self, "attentions", None)
        for i, resnet in enumerate(self.resnets):
            x = resnet(x, temb)
            if attns is not None:
                x = attns[i](x, context)
            states.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            states.append(x)
        return x, states


class MidBlock(nn.Module):
    """``UNetMidBlock2DCrossAttn`` with one transformer: resnet, transformer, resnet."""

    def __init__(self, ch, temb_ch, attn: dict, groups, eps):
        super().__init__()
        self.attentions = nn.ModuleList([Transformer2DModel(ch, groups=groups, **attn)])
        self.resnets = nn.ModuleList(ResnetBlock2D(ch, ch, temb_ch, groups, eps) for _ in range(2))

    def forward(self, x, temb, context):
        x = self.resnets[0](x, temb)
        x = self.attentions[0](x, context)
        return self.resnets[1](x, temb)


class UpBlock(nn.Module):
    """``UpBlock2D`` or ``CrossAttnUpBlock2D``: each resnet takes the running state concatenated with one skip
    connection (the last first), then an optional upsampler."""

    def __init__(self, in_ch, prev_ch, out_ch, temb_ch, layers, attn: dict | None, up: bool, groups, eps):
        super().__init__()
        resnets = []
        for i in range(layers):
            skip = in_ch if i == layers - 1 else out_ch
            resnets.append(ResnetBlock2D((prev_ch if i == 0 else out_ch) + skip, out_ch, temb_ch, groups, eps))
        if attn is not None:
            self.attentions = nn.ModuleList(Transformer2DModel(out_ch, groups=groups, **attn) for _ in range(layers))
        self.resnets = nn.ModuleList(resnets)
        self.upsamplers = nn.ModuleList([Upsample(out_ch)]) if up else None

    def forward(self, x, skips: list[torch.Tensor], temb, context, size):
        attns = getattr(self, "attentions", None)
        for i, resnet in enumerate(self.resnets):
            x = resnet(torch.cat([x, skips.pop()], dim=1), temb)
            if attns is not None:
                x = attns[i](x, context)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, size)
        return x


class UNet2DConditionModel(nn.Module):
    """``forward(sample, timestep, encoder_hidden_states=...)`` -> ``.sample``, as diffusers' class is called."""

    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        c = config
        chans = list(c.block_out_channels)
        n = len(chans)
        heads = c.attention_head_dim  # diffusers reads attention_head_dim as the head count when
        heads = [heads] * n if isinstance(heads, int) else list(heads)  # num_attention_heads is null
        groups, eps, layers = c.norm_num_groups, float(c.norm_eps), c.layers_per_block
        temb_ch = chans[0] * 4
        self.time_channels = chans[0]
        self.conv_in = nn.Conv2d(c.in_channels, chans[0], 3, padding=1)
        self.time_embedding = TimestepEmbedding(chans[0], temb_ch)

        def attn(num_heads: int) -> dict:
            return {"context_dim": c.cross_attention_dim, "heads": num_heads, "layers": c.transformer_layers_per_block}

        self.down_blocks = nn.ModuleList()
        self.up_blocks = nn.ModuleList()  # registered before mid_block, as in diffusers
        out_ch = chans[0]
        for i, kind in enumerate(c.down_block_types):
            in_ch, out_ch = out_ch, chans[i]
            a = attn(heads[i]) if kind == "CrossAttnDownBlock2D" else None
            self.down_blocks.append(DownBlock(in_ch, out_ch, temb_ch, layers, a, i < n - 1, groups, eps))
        self.mid_block = MidBlock(chans[-1], temb_ch, attn(heads[-1]), groups, eps)

        rev, rev_heads = chans[::-1], heads[::-1]
        out_ch = rev[0]
        for i, kind in enumerate(c.up_block_types):
            prev_ch, out_ch, in_ch = out_ch, rev[i], rev[min(i + 1, n - 1)]
            a = attn(rev_heads[i]) if kind == "CrossAttnUpBlock2D" else None
            self.up_blocks.append(UpBlock(in_ch, prev_ch, out_ch, temb_ch, layers + 1, a, i < n - 1, groups, eps))
        self.num_upsamplers = n - 1
        self.conv_norm_out = nn.GroupNorm(groups, chans[0], eps=eps)
        self.conv_out = nn.Conv2d(chans[0], c.out_channels, 3, padding=1)

    @property
    def dtype(self) -> torch.dtype:
        return self.conv_in.weight.dtype

    def forward(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor) -> UNetOutput:
        # the skip connections' sizes go to the upsamplers only when the input is not a multiple of the
        # overall factor (as in diffusers): otherwise nearest 2x, which gives the same values
        factor = 2**self.num_upsamplers
        forward_size = any(s % factor != 0 for s in sample.shape[-2:])
        t = timestep
        if not torch.is_tensor(t):
            t = torch.tensor([t], dtype=torch.float64 if isinstance(t, float) else torch.int64, device=sample.device)
        elif t.dim() == 0:
            t = t[None].to(sample.device)
        t = t.expand(sample.shape[0])
        t_emb = timestep_embedding(t, self.time_channels, self.config.flip_sin_to_cos, self.config.freq_shift)
        emb = self.time_embedding(t_emb.to(dtype=sample.dtype))
        context = encoder_hidden_states

        x = self.conv_in(sample)
        skips = [x]
        for block in self.down_blocks:
            x, states = block(x, emb, context)
            skips.extend(states)
        x = self.mid_block(x, emb, context)
        for i, block in enumerate(self.up_blocks):
            mine = skips[-len(block.resnets) :]
            del skips[-len(block.resnets) :]
            size = tuple(skips[-1].shape[2:]) if forward_size and i < len(self.up_blocks) - 1 else None
            x = block(x, mine, emb, context, size)
        x = self.conv_out(F.silu(self.conv_norm_out(x)))
        return UNetOutput(sample=x)
