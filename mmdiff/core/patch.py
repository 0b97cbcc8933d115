"""Token geometry: how a modality's latent becomes a token sequence for the DiT, and back.

A patcher owns ``patchify``, ``unpatchify``, the positional information (a fixed sin-cos table or
rotary frequencies) and the token ``grid`` that frame attention regroups by. The DiT never looks
at pixels, frames or characters, only at ``(B, N, token_dim)`` tokens and this object.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from einops import rearrange
from torch import nn

Tensor = torch.Tensor


TIME_POSITIONS = ("input", "after_first_block")


@dataclass
class PatchConfig:
    """``kind``: "image" (B,C,H,W), "video" (B,T,C,H,W) or "sequence" (B,L,C).
    ``size``: (H, W), (T, H, W) or (L,) of the largest input trained on."""

    kind: str = "image"
    channels: int = 4
    size: tuple[int, ...] = (32, 32)
    patch: int = 2
    temporal_patch: int = 1
    positions: str = "sincos"  # "sincos" | "learned" | "rope" (sequence only)
    # Image sin-cos positions as diffusers' PatchEmbed computes them (PixArt, converted DiTs): a grid
    # of any size is stretched to ``pos_base`` rows and columns, then divided by ``pos_scale`` (its
    # interpolation_scale). None: the DiT paper's table of the trained grid, cropped for smaller inputs.
    pos_base: int | None = None
    pos_scale: float = 1.0
    # Video: "input" adds the time table with the spatial one to the input tokens; "after_first_block"
    # adds it after the first (spatial) block, as Latte does (and not at all for a single frame).
    time_positions: str = "input"

    def __post_init__(self):
        if self.pos_base is not None and self.kind == "sequence":
            raise ValueError("pos_base (stretched sin-cos positions) is for images and video frames, not sequences")
        if self.time_positions not in TIME_POSITIONS:
            raise ValueError(f"time_positions must be one of {TIME_POSITIONS}, got {self.time_positions!r}")
        if self.time_positions != "input" and self.kind != "video":
            raise ValueError(f"time_positions={self.time_positions!r} is for video, not '{self.kind}'")
        if self.pos_scale != 1.0 and self.pos_base is None:
            raise ValueError("pos_scale applies to stretched positions: set pos_base too "
                             "(diffusers' base_size, the trained grid's height in patches)")


# ------------------------------------------------------------------------------ sin-cos tables

def sincos_1d(dim: int, positions: Tensor, max_period: float = 10000.0) -> Tensor:
    """(N, dim) table ``[sin(p w), cos(p w)]`` with geometric frequencies (as in MAE/DiT)."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding needs an even dimension, got {dim}")
    omega = 1.0 / max_period ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angles = positions.double().reshape(-1, 1) * omega[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()


def sincos_2d(dim: int, height: int, width: int) -> Tensor:
    """(H*W, dim): half the channels encode the row, half the column (DiT's layout)."""
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding needs a dimension divisible by 4, got {dim}")
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return torch.cat([sincos_1d(dim // 2, cols.flatten()), sincos_1d(dim // 2, rows.flatten())], dim=1)


def sincos_2d_stretched(dim: int, height: int, width: int, base: int, scale: float) -> Tensor:
    """(H*W, dim) table of ``sincos_2d``'s layout at fractional positions: row i at
    ``i * base / height / scale``, column j likewise. The grid is float32, divided in this order,
    as in PixArt's code and diffusers' PatchEmbed, so converted checkpoints see the positions they
    were trained with."""
    rows = torch.arange(height, dtype=torch.float32) / (height / base) / scale
    cols = torch.arange(width, dtype=torch.float32) / (width / base) / scale
    rows, cols = torch.meshgrid(rows, cols, indexing="ij")
    return torch.cat([sincos_1d(dim // 2, cols.flatten()), sincos_1d(dim // 2, rows.flatten())], dim=1)


def rope_frequencies(head_dim: int, length: int, base: float = 10000.0) -> tuple[Tensor, Tensor]:
    """cos/sin tables (L, head_dim/2) for rotary position embeddings (Su et al. 2021)."""
    inv = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.arange(length, dtype=torch.float64)[:, None] * inv[None]
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate channel pairs (2i, 2i+1) of ``x`` (B, heads, L, head_dim) by position.

    Written as ``x * [c0 c0 c1 c1 ..] + [x1 x0 x3 x2 ..] * [-s0 s0 -s1 s1 ..]`` on whole rows, the
    same products and sums as the textbook ``(x0 c - x1 s, x0 s + x1 c)`` bit for bit, but without
    stride-2 views: the CPU kernels run vectorised (text DiT step in bf16: ~2x less time here)."""
    n = x.shape[-2]
    cos = cos[:n].repeat_interleave(2, -1).to(x.dtype)
    sin = torch.stack([-sin[:n], sin[:n]], -1).flatten(-2).to(x.dtype)
    return x * cos + x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2) * sin


def frame_table(dim: int, height: int, width: int, stretch: tuple[int, float] | None) -> Tensor:
    """A frame's (H*W, dim) sin-cos table: the DiT paper's, or stretched to ``(base, scale)``."""
    return sincos_2d(dim, height, width) if stretch is None else sincos_2d_stretched(dim, height, width, *stretch)


# ---------------------------------------------------------------------------------- patchers

class Patcher(nn.Module, ABC):
    """Base: subclasses set ``token_dim`` and implement the three methods below."""

    token_dim: int

    @abstractmethod
    def patchify(self, x: Tensor) -> Tensor:  # (B, ..., ) -> (B, N, token_dim)
        ...

    @abstractmethod
    def unpatchify(self, tokens: Tensor, like: Tensor) -> Tensor:  # inverse, shaped like ``like``
        ...

    @abstractmethod
    def positions(self, like: Tensor) -> Tensor | None:  # (N, hidden) added to tokens, or None
        ...

    def late_positions(self, like: Tensor) -> Tensor | None:
        """(N, hidden) added after the DiT's first block (Latte's time positions), or None."""
        return None

    def grid(self, like: Tensor) -> tuple[int, int] | None:
        """``(frames, tokens_per_frame)`` for frame attention; None when there is no time axis."""
        return None

    def token_mask(self, mask: Tensor) -> Tensor:
        """A per-element mask shaped like the input -> a per-token mask (B, N), 1 = given."""
        tokens = self.patchify(mask.to(torch.float32))
        return tokens.amax(-1)


class ImagePatcher(Patcher):
    """(B, C, H, W) -> (B, H/p * W/p, C*p*p); the channel order (c, p, q) equals a Conv2d's, so
    conv patch-embedding weights reshape into ours."""

    def __init__(self, config: PatchConfig, hidden: int):
        super().__init__()
        self.p = config.patch
        self.token_dim = config.channels * self.p**2
        h, w = config.size
        if h % self.p or w % self.p:
            raise ValueError(f"image size {config.size} is not divisible by patch size {self.p}")
        self.size = (h // self.p, w // self.p)
        self.stretch = None if config.pos_base is None else (config.pos_base, config.pos_scale)
        self.register_buffer("pos", self.table(hidden, *self.size))

    def patchify(self, x):
        return rearrange(x, "b c (h p) (w q) -> b (h w) (c p q)", p=self.p, q=self.p)

    def unpatchify(self, tokens, like):
        h = like.shape[-2] // self.p
        return rearrange(tokens, "b (h w) (c p q) -> b c (h p) (w q)", h=h, p=self.p, q=self.p)

    def table(self, hidden: int, h: int, w: int) -> Tensor:
        return frame_table(hidden, h, w, self.stretch)

    def positions(self, like):
        h, w = like.shape[-2] // self.p, like.shape[-1] // self.p
        if (h, w) == self.size:
            return self.pos
        if self.stretch is not None:  # any grid, computed for its own size
            return self.table(self.pos.shape[-1], h, w).to(self.pos.device)
        if h > self.size[0] or w > self.size[1]:
            raise ValueError(f"input of {like.shape[-2]}x{like.shape[-1]} is larger than the trained "
                             f"{self.size[0] * self.p}x{self.size[1] * self.p}")
        return self.pos.reshape(*self.size, -1)[:h, :w].reshape(h * w, -1)


class VideoPatcher(Patcher):
    """(B, T, C, H, W) -> (B, T/pt * H/p * W/p, C*pt*p*p) tubelets, frame-major so that frame
    attention can regroup by ``(frames, tokens_per_frame)``. Positions are separable: a 2-D
    spatial table (stretched to any frame size with ``pos_base``, as for images) plus a 1-D
    temporal table, added with it or after the first block (``time_positions``)."""

    def __init__(self, config: PatchConfig, hidden: int):
        super().__init__()
        self.p, self.pt = config.patch, config.temporal_patch
        t, h, w = config.size
        if h % self.p or w % self.p or t % self.pt:
            raise ValueError(f"video size {config.size} is not divisible by patches ({self.pt}, {self.p})")
        self.token_dim = config.channels * self.pt * self.p**2
        self.size = (h // self.p, w // self.p)
        self.stretch = None if config.pos_base is None else (config.pos_base, config.pos_scale)
        self.time_late = config.time_positions == "after_first_block"
        self.register_buffer("pos_space", frame_table(hidden, *self.size, self.stretch))
        self.register_buffer("pos_time", sincos_1d(hidden, torch.arange(t // self.pt)))

    def patchify(self, x):
        return rearrange(x, "b (t r) c (h p) (w q) -> b (t h w) (c r p q)", r=self.pt, p=self.p, q=self.p)

    def unpatchify(self, tokens, like):
        t, h = like.shape[1] // self.pt, like.shape[-2] // self.p
        return rearrange(tokens, "b (t h w) (c r p q) -> b (t r) c (h p) (w q)",
                         t=t, h=h, r=self.pt, p=self.p, q=self.p)

    def grid(self, like):
        return like.shape[1] // self.pt, (like.shape[-2] // self.p) * (like.shape[-1] // self.p)

    def positions(self, like):
        frames, _ = self.grid(like)
        if frames > len(self.pos_time):
            raise ValueError(f"{like.shape[1]} frames is more than the {len(self.pos_time) * self.pt} "
                             f"this model was built for")
        space = self.space_table(like)[None]  # (1, H*W, D)
        if self.time_late:
            return space.expand(frames, -1, -1).flatten(0, 1)
        return (self.pos_time[:frames, None, :] + space).flatten(0, 1)

    def late_positions(self, like):
        frames, n = self.grid(like)
        if not self.time_late or frames == 1:  # Latte skips the table for a single frame
            return None
        return self.pos_time[:frames, None, :].expand(-1, n, -1).flatten(0, 1)

    def space_table(self, like) -> Tensor:
        h, w = like.shape[-2] // self.p, like.shape[-1] // self.p
        if (h, w) == self.size:
            return self.pos_space
        if self.stretch is None:
            raise ValueError(f"frames of {like.shape[-2]}x{like.shape[-1]} are not the trained "
                             f"{self.size[0] * self.p}x{self.size[1] * self.p}")
        return frame_table(self.pos_space.shape[-1], h, w, self.stretch).to(self.pos_space.device)


class SequencePatcher(Patcher):
    """(B, L, C) token features as they are; absolute positions are sin-cos or learned, or none
    here when the attention applies rotary embeddings."""

    def __init__(self, config: PatchConfig, hidden: int):
        super().__init__()
        self.token_dim = config.channels
        self.mode = config.positions
        length = config.size[0]
        if self.mode == "learned":
            self.pos = nn.Parameter(torch.zeros(length, hidden))
            nn.init.normal_(self.pos, std=0.02)
        elif self.mode == "sincos":
            self.register_buffer("pos", sincos_1d(hidden, torch.arange(length)))
        elif self.mode != "rope":
            raise ValueError(f"unknown positions '{self.mode}'; choose sincos, learned or rope")
        self.length = length

    def patchify(self, x):
        return x

    def unpatchify(self, tokens, like):
        return tokens

    def positions(self, like):
        if like.shape[1] > self.length:
            raise ValueError(f"sequence of {like.shape[1]} tokens is longer than the {self.length} "
                             f"this model was built for")
        return None if self.mode == "rope" else self.pos[: like.shape[1]]


PATCHERS = {"image": ImagePatcher, "video": VideoPatcher, "sequence": SequencePatcher}


def build_patcher(config: PatchConfig, hidden: int) -> Patcher:
    if config.kind not in PATCHERS:
        raise ValueError(f"unknown patch kind '{config.kind}'; choose one of {sorted(PATCHERS)}")
    return PATCHERS[config.kind](config, hidden)
