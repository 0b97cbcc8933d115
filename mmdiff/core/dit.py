"""DiT (Peebles & Xie, 2023): a modality-agnostic transformer denoiser over a token sequence.

One ``DiTBlock`` serves every modality. Its self-attention runs over all tokens ("joint"), over
the tokens of each frame ("spatial") or over each spatial position across frames ("temporal");
the last two only regroup the token tensor with einops, so frame attention never forms a
(T*H*W)^2 attention matrix. Attention is SDPA, except short bfloat16 sequences on the
CPU, which train faster written out (``ScoresAttention``, float32 scores as in the flash kernel).
Conditioning is adaLN-Zero on noise level (+ class label), with optional cross-attention to a
sequence of context embeddings (text encoders).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

from .checkpoint import PretrainedMixin
from .patch import PatchConfig, apply_rope, build_patcher, rope_frequencies

Tensor = torch.Tensor

# DiT paper Table 1: hidden size, depth, heads per model size; "/p" is the patch size.
SIZES = {"S": (384, 12, 6), "B": (768, 12, 12), "L": (1024, 24, 16), "XL": (1152, 28, 16)}
PRESETS = {f"DiT-{size}/{p}": dict(hidden_size=d, depth=n, num_heads=h, patch=p)
           for size, (d, n, h) in SIZES.items() for p in (2, 4, 8)}
ATTENTIONS = ("joint", "factorized", "causal")


@dataclass
class DiTConfig:
    patch: PatchConfig = field(default_factory=PatchConfig)
    out_channels: int | None = None  # per-element output channels (default: the input's)
    hidden_size: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    num_classes: int = 0  # 0: no label conditioning
    class_dropout: float = 0.1  # > 0 adds a learned null class for classifier-free guidance
    # DiT initialises the label table at std 0.02, tiny next to the timestep embedding, so labels
    # steer the adaLN modulation late in training; small models on short runs learn them sooner at 1.
    class_embed_std: float = 0.02
    context_dim: int = 0  # > 0: cross-attention to (B, M, context_dim) embeddings
    qk_norm: bool = False
    attention: str = "joint"  # "factorized": spatial and temporal blocks alternate (Latte)
    given_embedding: bool = False  # a learned flag on tokens whose content is given clean
    gradient_checkpointing: bool = False
    frequency_dim: int = 256

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.attention not in ATTENTIONS:
            raise ValueError(f"unknown attention '{self.attention}'; choose one of {ATTENTIONS}")


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return torch.addcmul(shift, x, 1 + scale)


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal features of a (fractional) timestep, ``[cos, sin]`` as in DiT/ADM."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def per_sample(layer: nn.Module, c: Tensor, dtype: torch.dtype) -> Tensor:
    """``layer`` on the (B, D) conditioning, the result as (B, 1, .) in ``dtype``. On the CPU it
    runs outside autocast, in the layer's own precision: with B rows, casting an adaLN weight
    (6D x D) to bfloat16 and its gradient back costs more than the product (DiT-B/2 bf16 step:
    1.03x over 9 paired rounds). On a GPU the casts are cheap and a float32 product without
    tensor cores is not, so autocast keeps it there."""
    if c.device.type != "cpu":
        return layer(c).to(dtype)[:, None]
    with torch.autocast("cpu", enabled=False):
        return layer(c.to(layer[-1].weight.dtype)).to(dtype)[:, None]


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden: int, frequency_dim: int):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(timestep_embedding(t, self.frequency_dim).to(self.mlp[0].weight.dtype))


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


def gelu_tanh(x: Tensor) -> Tensor:
    """DiT's tanh-approximated GELU. In bfloat16 on the CPU the exact (erf) GELU stands in for it:
    ATen's bfloat16 tanh-GELU takes ~4x as long there (forward and backward, a tenth of a DiT-S/2
    training step), and the two functions differ by at most 4.7e-4 (at x = -2.7), below bfloat16's
    resolution at the activations' scale: over unit-Gaussian inputs the bfloat16 erf-GELU is off
    the tanh-GELU by 8.57e-4 on average, bfloat16 rounding of the tanh-GELU itself by 8.46e-4."""
    exact = x.device.type == "cpu" and x.dtype == torch.bfloat16
    return F.gelu(x, approximate="none" if exact else "tanh")


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(gelu_tanh(self.fc1(x)))


class DiTBlock(nn.Module):
    """adaLN-Zero block: modulated self-attention, optional cross-attention, modulated MLP."""

    def __init__(self, config: DiTConfig, mode: str = "joint"):
        super().__init__()
        d = config.hidden_size
        self.mode = mode
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(d, config.num_heads, config.qk_norm)
        if config.context_dim:
            self.norm_cross = nn.LayerNorm(d, eps=1e-6)
            self.cross_attn = Attention(d, config.num_heads, config.qk_norm, context_dim=config.context_dim)
        self.norm2 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(d, int(d * config.mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))

    def forward(self, x, c, grid=None, rope=None, mask=None, causal=False, context=None, context_mask=None):
        shift1, scale1, gate1, shift2, scale2, gate2 = per_sample(self.adaLN_modulation, c, x.dtype).chunk(6, dim=-1)
        mode = self.mode if grid is not None else "joint"
        h = self.attn(modulate(self.norm1(x), shift1, scale1), mode=mode, grid=grid, rope=rope, mask=mask,
                      causal=causal)
        x = torch.addcmul(x, gate1, h)
        if context is not None:
            x = x + self.cross_attn(self.norm_cross(x), context=context, mask=context_mask)
        return torch.addcmul(x, gate2, self.mlp(modulate(self.norm2(x), shift2, scale2)))


class FinalLayer(nn.Module):
    def __init__(self, hidden: int, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden, out_dim)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))

    def forward(self, x, c):
        shift, scale = per_sample(self.adaLN_modulation, c, x.dtype).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


class DiT(PretrainedMixin, nn.Module):
    """``model(x, timestep, class_labels=None, context=None, context_mask=None, given=None,
    attention_mask=None)`` -> output shaped like ``x`` (with ``out_channels`` channels)."""

    config_class = DiTConfig

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = config
        d, pc = config.hidden_size, config.patch
        self.patcher = build_patcher(pc, d)
        out_channels = config.out_channels or pc.channels
        self.out_dim = self.patcher.token_dim // pc.channels * out_channels
        self.x_embedder = nn.Linear(self.patcher.token_dim, d)
        self.t_embedder = TimestepEmbedder(d, config.frequency_dim)
        if config.num_classes:
            # The null class (index num_classes) exists only when labels are dropped in training.
            self.y_embedder = nn.Embedding(config.num_classes + int(config.class_dropout > 0), d)
        if config.given_embedding:
            self.given_embed = nn.Parameter(torch.zeros(d))
        modes = ["spatial", "temporal"] if config.attention == "factorized" else ["joint"]
        self.blocks = nn.ModuleList(DiTBlock(config, modes[i % len(modes)]) for i in range(config.depth))
        self.final_layer = FinalLayer(d, self.out_dim)
        if pc.kind == "sequence" and pc.positions == "rope":
            cos, sin = rope_frequencies(d // config.num_heads, pc.size[0])
            self.register_buffer("rope_cos", cos)
            self.register_buffer("rope_sin", sin)
        self.initialize_weights()

    @classmethod
    def from_preset(cls, name: str, *, in_channels: int = 4, input_size: int | tuple = 32, **options) -> "DiT":
        """``DiT.from_preset("DiT-XL/2", in_channels=4, input_size=32, num_classes=1000)``; an
        image patcher unless ``patch=PatchConfig(...)`` is given; other options are ``DiTConfig``
        fields and override the preset."""
        if name not in PRESETS:
            raise ValueError(f"unknown DiT preset '{name}'; choose one of {list(PRESETS)}")
        patch = options.pop("patch", None)
        preset = {**PRESETS[name], **options}  # options override the preset (e.g. depth=6)
        p = preset.pop("patch")
        size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
        patch = patch or PatchConfig("image", in_channels, size, p)
        return cls(DiTConfig(patch=replace(patch, patch=p), **preset))

    @property
    def null_class(self) -> int | None:
        """Label index meaning "no label" for classifier-free guidance (None if not trained with one)."""
        c = self.config
        return c.num_classes if c.num_classes and c.class_dropout > 0 else None

    def initialize_weights(self):
        # DiT's scheme: xavier linears, N(0, 0.02) embeddings, zero adaLN and output (adaLN-Zero).
        def basic(m):
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        self.apply(basic)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        if self.config.num_classes:
            nn.init.normal_(self.y_embedder.weight, std=self.config.class_embed_std)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        for layer in (self.final_layer.adaLN_modulation[-1], self.final_layer.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def condition(self, timestep: Tensor, class_labels: Tensor | None) -> Tensor:
        c = self.t_embedder(timestep)  # (B, D)
        if self.config.num_classes:
            if class_labels is None:
                raise ValueError("this model is class-conditional: pass class_labels "
                                 f"(0..{self.config.num_classes - 1}, or {self.null_class} for none)")
            labels = class_labels.long()
            limit = self.config.num_classes + int(self.null_class is not None)
            # Checked on the host only: on a GPU the check would wait for the device at every
            # forward. Pipelines check labels on the host before moving them.
            if labels.device.type == "cpu" and (labels.min() < 0 or labels.max() >= limit):
                raise ValueError(f"class label out of range: got {labels.min().item()}..{labels.max().item()}, "
                                 f"the model knows 0..{limit - 1}")
            if self.training and self.null_class is not None:
                drop = torch.rand(labels.shape, device=labels.device) < self.config.class_dropout
                labels = torch.where(drop, self.null_class, labels)
            c = c + self.y_embedder(labels)
        return c

    def forward(self, x: Tensor, timestep: Tensor, class_labels: Tensor | None = None,
                context: Tensor | None = None, context_mask: Tensor | None = None,
                given: Tensor | None = None, attention_mask: Tensor | None = None) -> Tensor:
        timestep = torch.as_tensor(timestep, device=x.device).reshape(-1).expand(x.shape[0])
        h = self.x_embedder(self.patcher.patchify(x))  # (B, N, D)
        pos = self.patcher.positions(x)
        if pos is not None:
            h = h + pos.to(h.dtype)
        if given is not None and self.config.given_embedding:
            h = h + self.patcher.token_mask(given)[..., None].to(h.dtype) * self.given_embed
        with torch.autocast("cpu", enabled=False):  # B rows: see per_sample
            c = self.condition(timestep, class_labels)  # (B, D)
        grid = self.patcher.grid(x)
        rope = (self.rope_cos, self.rope_sin) if hasattr(self, "rope_cos") else None
        mask = None if attention_mask is None else attention_mask.bool()[:, None, None, :]
        cmask = None if context_mask is None else context_mask.bool()[:, None, None, :]
        causal = self.config.attention == "causal"
        for block in self.blocks:
            args = (h, c, grid, rope, mask, causal, context, cmask)
            if self.config.gradient_checkpointing and self.training:
                h = checkpoint(block, *args, use_reentrant=False)
            else:
                h = block(*args)
        out = self.final_layer(h, c)  # (B, N, out_dim)
        return self.patcher.unpatchify(out, x)
