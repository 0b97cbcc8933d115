"""The Stable Diffusion VAE's network (encoder and decoder), parameter-for-parameter diffusers'
``AutoencoderKL`` so a ``vae/`` folder of any SD-family model loads into it; the autoencoder
interface around it is ``autoencoders.AutoencoderKL``."""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import nn

ACTIVATIONS = {"silu": nn.SiLU, "swish": nn.SiLU, "mish": nn.Mish, "gelu": nn.GELU, "relu": nn.ReLU}
DOWN_BLOCK = "DownEncoderBlock2D"
UP_BLOCK = "UpDecoderBlock2D"
# An architecture constant of diffusers' VAE, not a tunable: every GroupNorm uses this eps.
NORM_EPS = 1e-6


@dataclass
class AutoencoderKLConfig:
    """diffusers' ``AutoencoderKL`` options under diffusers' names. The defaults are diffusers'
    defaults, so an old ``config.json`` that omits a key (early SD 1.x folders have no
    ``scaling_factor``) means what it meant to diffusers."""

    in_channels: int = 3
    out_channels: int = 3
    down_block_types: tuple[str, ...] = (DOWN_BLOCK,)
    up_block_types: tuple[str, ...] = (UP_BLOCK,)
    block_out_channels: tuple[int, ...] = (64,)
    layers_per_block: int = 1
    act_fn: str = "silu"
    latent_channels: int = 4
    norm_num_groups: int = 32
    sample_size: int | tuple[int, ...] = 32
    scaling_factor: float = 0.18215
    shift_factor: float | None = None
    latents_mean: tuple[float, ...] | None = None  # per-channel shift (SDXL-style); excludes shift_factor
    latents_std: tuple[float, ...] | None = None   # per-channel std, divides scaling_factor
    force_upcast: bool = True
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True

    def __post_init__(self):
        for name in ("down_block_types", "up_block_types", "block_out_channels", "sample_size",
                     "latents_mean", "latents_std"):  # JSON gives lists; keep configs comparable
            if isinstance(getattr(self, name), list):
                setattr(self, name, tuple(getattr(self, name)))
        n = len(self.block_out_channels)
        if set(self.down_block_types) != {DOWN_BLOCK} or set(self.up_block_types) != {UP_BLOCK}:
            raise ValueError(f"only {DOWN_BLOCK}/{UP_BLOCK} blocks are supported, got "
                             f"{self.down_block_types} / {self.up_block_types}")
        if len(self.down_block_types) != n or len(self.up_block_types) != n:
            raise ValueError(f"need one down and one up block per entry of block_out_channels ({n}), got "
                             f"{len(self.down_block_types)} and {len(self.up_block_types)}")
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ValueError(f"every block_out_channels entry {self.block_out_channels} must be divisible "
                             f"by norm_num_groups={self.norm_num_groups}")
        if self.act_fn.lower() not in ACTIVATIONS:
            raise ValueError(f"act_fn '{self.act_fn}' is not one of {sorted(ACTIVATIONS)}")
        for name in ("latents_mean", "latents_std"):
            value = getattr(self, name)
            if value is not None and len(value) != self.latent_channels:
                raise ValueError(f"{name} has {len(value)} entries, latent_channels is {self.latent_channels}")
        if self.latents_mean is not None and self.shift_factor is not None:
            raise ValueError("set either shift_factor or latents_mean, not both")


class ResnetBlock(nn.Module):
    """diffusers' ``ResnetBlock2D`` without a time embedding: two norm-act-conv steps plus a skip
    (a 1x1 conv when the channel count changes)."""

    def __init__(self, cin: int, cout: int, groups: int, act: str):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps=NORM_EPS)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, cout, eps=NORM_EPS)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.nonlinearity = ACTIVATIONS[act.lower()]()
        self.conv_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x):  # (B, cin, H, W) -> (B, cout, H, W)
        h = self.conv1(self.nonlinearity(self.norm1(x)))
        h = self.conv2(self.nonlinearity(self.norm2(h)))
        skip = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return skip + h


class SelfAttention(nn.Module):
    """Single-head spatial self-attention of the VAE mid block (diffusers' ``Attention`` as the
    VAE configures it: group norm in, residual out), run by ``F.scaled_dot_product_attention``."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, channels, eps=NORM_EPS)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])  # diffusers' name: to_out.0

    def forward(self, x):
        b, c, h, w = x.shape
        tokens = self.group_norm(x.flatten(2)).transpose(1, 2)  # (B, HW, C); norm on 3D as diffusers does
        q, k, v = (proj(tokens).unsqueeze(1) for proj in (self.to_q, self.to_k, self.to_v))  # (B, 1, HW, C)
        out = F.scaled_dot_product_attention(q, k, v).squeeze(1)  # (B, HW, C)
        out = self.to_out[0](out).transpose(1, 2).reshape(b, c, h, w)  # a channels-last view
        return out + x  # out first: the sum keeps its layout, as in diffusers, so later convs round alike


class MidBlock(nn.Module):
    """resnet, attention (optional), resnet at the lowest resolution (diffusers' ``UNetMidBlock2D``)."""

    def __init__(self, channels: int, groups: int, act: str, attention: bool):
        super().__init__()
        self.attentions = nn.ModuleList([SelfAttention(channels, groups)] if attention else [])
        self.resnets = nn.ModuleList([ResnetBlock(channels, channels, groups, act) for _ in range(2)])

    def forward(self, x):
        x = self.resnets[0](x)
        for attn in self.attentions:
            x = attn(x)
        return self.resnets[1](x)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x):  # (B, C, H, W) -> (B, C, H/2, W/2)
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # asymmetric pad, as the original SD VAE was trained


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):  # (B, C, H, W) -> (B, C, 2H, 2W)
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class DownEncoderBlock(nn.Module):
    def __init__(self, cin: int, cout: int, layers: int, groups: int, act: str, downsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(cin if i == 0 else cout, cout, groups, act) for i in range(layers)])
        self.downsamplers = nn.ModuleList([Downsample(cout)] if downsample else [])

    def forward(self, x):
        for layer in [*self.resnets, *self.downsamplers]:
            x = layer(x)
        return x


class UpDecoderBlock(nn.Module):
    def __init__(self, cin: int, cout: int, layers: int, groups: int, act: str, upsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(cin if i == 0 else cout, cout, groups, act) for i in range(layers)])
        self.upsamplers = nn.ModuleList([Upsample(cout)] if upsample else [])

    def forward(self, x):
        for layer in [*self.resnets, *self.upsamplers]:
            x = layer(x)
        return x


class Encoder(nn.Module):
    """images -> posterior moments (mean and log-variance stacked on channels)."""

    def __init__(self, cfg: AutoencoderKLConfig):
        super().__init__()
        ch, groups, act, n = cfg.block_out_channels, cfg.norm_num_groups, cfg.act_fn, len(cfg.block_out_channels)
        self.conv_in = nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)
        self.down_blocks = nn.ModuleList([
            DownEncoderBlock(ch[max(i - 1, 0)], ch[i], cfg.layers_per_block, groups, act, downsample=i < n - 1)
            for i in range(n)])
        self.mid_block = MidBlock(ch[-1], groups, act, cfg.mid_block_add_attention)
        self.conv_norm_out = nn.GroupNorm(groups, ch[-1], eps=NORM_EPS)
        self.conv_act = nn.SiLU()  # diffusers uses SiLU here whatever act_fn says
        self.conv_out = nn.Conv2d(ch[-1], 2 * cfg.latent_channels, 3, padding=1)

    def forward(self, x):  # (B, C, H, W) -> (B, 2c, H/f, W/f)
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(self.conv_act(self.conv_norm_out(x)))


class Decoder(nn.Module):
    """latents (unscaled) -> images."""

    def __init__(self, cfg: AutoencoderKLConfig):
        super().__init__()
        ch, groups, act, n = cfg.block_out_channels[::-1], cfg.norm_num_groups, cfg.act_fn, len(cfg.block_out_channels)
        # ch runs widest first: the decoder mirrors the encoder
        self.conv_in = nn.Conv2d(cfg.latent_channels, ch[0], 3, padding=1)
        self.mid_block = MidBlock(ch[0], groups, act, cfg.mid_block_add_attention)
        self.up_blocks = nn.ModuleList([
            UpDecoderBlock(ch[max(i - 1, 0)], ch[i], cfg.layers_per_block + 1, groups, act, upsample=i < n - 1)
            for i in range(n)])
        self.conv_norm_out = nn.GroupNorm(groups, ch[-1], eps=NORM_EPS)
        self.conv_act = nn.SiLU()  # as in Encoder
        self.conv_out = nn.Conv2d(ch[-1], cfg.out_channels, 3, padding=1)

    def forward(self, z):  # (B, c, h, w) -> (B, C, h*f, w*f)
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(self.conv_act(self.conv_norm_out(x)))
