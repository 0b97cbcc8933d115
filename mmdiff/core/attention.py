"""Attention for the DiT: SDPA, except short bfloat16 sequences on the CPU, which train faster
written out (``ScoresAttention``, float32 scores as in the flash kernel), and the multi-head
module whose ``mode`` regroups tokens for frame attention without forming a (T*H*W)^2 matrix.

Masks follow SDPA: boolean, True where a query may attend; a query with no key to attend to gets 0.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .patch import apply_rope

Tensor = torch.Tensor


class ScoresAttention(torch.autograd.Function):
    """``softmax(q k^T / sqrt(d)) v`` written out, for short bfloat16 sequences on the CPU, where
    PyTorch's flash kernel trains ~1.5x slower than plain batched matmuls (benchmarks/dit_train.py)
    and its masked or causal backward slower still. Scores and softmax stay float32 as in the flash
    kernel; the products with the probabilities and the gradients run in bfloat16. ``mask``: a
    boolean broadcastable to (B, H, N, M), True where a query may attend (SDPA's convention);
    ``causal``: queries attend to keys at their position and before. Saves the probabilities
    (B, H, N, M) where flash saves a log-sum-exp (B, H, N)."""

    @staticmethod
    def forward(ctx, q, k, v, mask=None, causal=False):
        # Dense copies of the strided views of the fused qkv output: every product below reads
        # them, and matmul would otherwise copy them each time.
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()  # (B, H, N, d), (B, H, M, d)
        scale = q.shape[-1] ** -0.5
        q32 = q.to(torch.float32, copy=True).mul_(scale)
        scores = q32 @ k.float().transpose(-1, -2)  # (B, H, N, M)
        if causal:
            mask = _causal(q.shape[-2], k.shape[-2], q.device) if mask is None else mask & _causal(
                q.shape[-2], k.shape[-2], q.device)
        if mask is not None:
            scores.masked_fill_(~mask, float("-inf"))
        p = scores.softmax(-1)
        if mask is not None:  # a query with no key to attend to (an empty context) gets 0, as in SDPA
            p.masked_fill_(~mask.any(-1, keepdim=True), 0.0)
        p = p.to(v.dtype)
        ctx.save_for_backward(q, k, v, p)
        # Stored (B, N, H, d) like flash's output, so merging the heads afterwards is a free view.
        return (p @ v).transpose(1, 2).contiguous().transpose(1, 2)  # (B, H, N, d)

    @staticmethod
    def backward(ctx, grad):
        q, k, v, p = ctx.saved_tensors
        scale = q.shape[-1] ** -0.5
        # ATen's fused softmax backward, p * (dp - rowsum(dp * p)), accumulates in float32 and
        # reads the bfloat16 operands directly; written out with a float32 copy, the mixed-dtype
        # product alone took as long as a (N, M) matmul. Masked entries have p = 0, so no gradient.
        ds = torch.ops.aten._softmax_backward_data(grad @ v.transpose(-1, -2), p, -1, p.dtype)
        # 1/sqrt(d) goes on the (N, d) results, a quarter the size of ds at M = 4d.
        return (ds @ k).mul_(scale), (ds.transpose(-1, -2) @ q).mul_(scale), p.transpose(-1, -2) @ grad, None, None


def _causal(n: int, m: int, device) -> Tensor:
    """SDPA's ``is_causal`` pattern: query i sees keys 0..i (top-left aligned)."""
    return torch.ones(n, m, dtype=torch.bool, device=device).tril()


# Any attention keeps q, k, v and its output for backward: 4 * D values per query. The explicit
# path adds H * M probabilities per query and is taken only while that is no more (M <= 4 * d).
KEPT_FOR_BACKWARD = 4


def attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, causal: bool = False) -> Tensor:
    """Attention over (B, H, N, d) queries and (B, H, M, d) keys/values, ``mask`` boolean (True
    attends) or additive: SDPA, except bfloat16 on the CPU with short keys and no additive mask
    (``ScoresAttention``), at most doubling attention memory."""
    short = k.shape[-2] <= KEPT_FOR_BACKWARD * q.shape[-1]
    boolean = mask is None or mask.dtype == torch.bool
    if q.device.type == "cpu" and q.dtype == torch.bfloat16 and boolean and short:
        return ScoresAttention.apply(q, k, v, mask, causal)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)


class Attention(nn.Module):
    """Multi-head attention through ``attend``; ``mode`` regroups tokens before attending."""

    def __init__(self, dim: int, heads: int, qk_norm: bool, context_dim: int = 0):
        super().__init__()
        self.heads = heads
        self.cross = context_dim > 0
        if self.cross:
            self.q = nn.Linear(dim, dim)
            self.kv = nn.Linear(context_dim, 2 * dim)
        else:
            self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = nn.RMSNorm(dim // heads, eps=1e-6) if qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(dim // heads, eps=1e-6) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, *, mode="joint", grid=None, rope=None, mask=None, causal=False, context=None):
        if mode == "spatial":
            x = rearrange(x, "b (t s) d -> (b t) s d", t=grid[0])
        elif mode == "temporal":
            x = rearrange(x, "b (t s) d -> (b s) t d", t=grid[0])
        if self.cross:
            q = rearrange(self.q(x), "b n (h d) -> b h n d", h=self.heads)
            k, v = rearrange(self.kv(context), "b m (two h d) -> two b h m d", two=2, h=self.heads)
        else:
            q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.heads)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        out = attend(q, k, v, mask, causal)
        out = self.proj(rearrange(out, "b h n d -> b n (h d)"))
        if mode == "spatial":
            out = rearrange(out, "(b t) s d -> b (t s) d", t=grid[0])
        elif mode == "temporal":
            out = rearrange(out, "(b s) t d -> b (t s) d", s=grid[1])
        return out
