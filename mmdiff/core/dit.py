"""DiT (Peebles & Xie, 2023): a modality-agnostic transformer denoiser over a token sequence.

One ``DiTBlock`` serves every modality. Its self-attention runs over all tokens ("joint"), over
the tokens of each frame ("spatial") or over each spatial position across frames ("temporal");
the last two only regroup the token tensor with einops (``attention.py``), so frame attention
never forms a (T*H*W)^2 attention matrix. Conditioning is adaLN-Zero on noise level (+ class
label), with optional cross-attention to a sequence of context embeddings (text encoders).

Published DiT-family weights (DiT, SiT, PixArt-alpha/Sigma) run natively through a few config
options that ``mmdiff.components.converters`` sets; their defaults are the DiT paper's code and
leave the forward of every mmdiff model as it was: diffusers' timestep-frequency shift and
LayerNorm eps, learned-variance outputs (the variance channels are never computed), PixArt's
adaLN-single (one shared projection plus per-block tables), its caption projection,
cross-attention without a LayerNorm and its 1024-px size micro-conditions. Latte
(``mmdiff.components.latte``) adds two: temporal blocks without cross-attention, and the
temporal positions added after the first (spatial) block (``PatchConfig.time_positions``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .attention import KEPT_FOR_BACKWARD, Attention, ScoresAttention, attend  # noqa: F401 (the DiT's API)
from . import checks
from .checkpoint import PretrainedMixin
from .patch import PatchConfig, build_patcher, rope_frequencies

Tensor = torch.Tensor

# DiT paper Table 1: hidden size, depth, heads per model size; "/p" is the patch size.
SIZES = {"S": (384, 12, 6), "B": (768, 12, 12), "L": (1024, 24, 16), "XL": (1152, 28, 16)}
PRESETS = {f"DiT-{size}/{p}": dict(hidden_size=d, depth=n, num_heads=h, patch=p)
           for size, (d, n, h) in SIZES.items() for p in (2, 4, 8)}
ATTENTIONS = ("joint", "factorized", "causal")
ADALNS = ("zero", "single")


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
    # Options of published checkpoints (mmdiff.components.converters sets them); each default is
    # the DiT paper's code, which mmdiff's own models follow.
    frequency_shift: float = 0.0  # diffusers' downscale_freq_shift: frequencies 1e4^(-i / (half - shift))
    timestep_scale: float = 1.0  # sinusoids of timestep * scale (SiT embeds its time in [0, 1])
    attention_norm_eps: float = 1e-6  # the LayerNorm before self-attention
    mlp_norm_eps: float = 1e-6  # the LayerNorm before the MLP (diffusers' DiT: 1e-5)
    # The output layer also predicts out_channels variance channels (improved DDPM); they are never
    # computed here, so the model returns eps and guidance acts on eps alone.
    learned_sigma: bool = False
    adaln: str = "zero"  # "single": PixArt's one shared projection plus a learned table per block
    context_norm: bool = True  # a LayerNorm before cross-attention (PixArt has none)
    context_projection: bool = False  # PixArt's caption projection: MLP context_dim -> hidden_size
    size_conditioning: bool = False  # PixArt-alpha 1024 px: forward takes resolution and aspect_ratio
    temporal_cross_attention: bool = True  # False: only spatial blocks attend to the context (Latte)
    # The mask-averaged context, through an MLP, joins the timestep embedding (SD3's pooled text,
    # Imagen's pooled embedding): a prompt steers the adaLN modulation as directly as a label does.
    pooled_context: bool = False

    def __post_init__(self):
        for name in ("hidden_size", "depth", "num_heads", "frequency_dim"):
            checks.integer(name, getattr(self, name), low=1)
        checks.integer("num_classes", self.num_classes, low=0)
        checks.number("class_dropout", self.class_dropout, low=0, high=0.999)
        checks.number("mlp_ratio", self.mlp_ratio, low=0, open_low=True)
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.attention not in ATTENTIONS:
            raise ValueError(f"unknown attention '{self.attention}'; choose one of {ATTENTIONS}")
        if self.adaln not in ADALNS:
            raise ValueError(f"unknown adaln '{self.adaln}'; choose one of {ADALNS}")
        if self.pooled_context and not self.context_dim:
            raise ValueError("pooled_context needs context_dim > 0 (the width of the context it pools)")
        if self.context_projection and not self.context_dim:
            raise ValueError("context_projection needs context_dim > 0 (the width of the context it projects)")
        if self.size_conditioning and self.hidden_size % 3:
            raise ValueError(f"size_conditioning splits hidden_size into height, width and aspect ratio "
                             f"thirds; {self.hidden_size} is not divisible by 3")


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return torch.addcmul(shift, x, 1 + scale)


def timestep_frequencies(dim: int, max_period: float = 10000.0, shift: float = 0.0, device=None) -> Tensor:
    """The dim // 2 float32 frequencies of ``timestep_embedding``, geometric from 1 down."""
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=device)
    return torch.exp(exponent / (half - shift))


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0, shift: float = 0.0,
                       scale: float = 1.0) -> Tensor:
    """Sinusoidal features of a (fractional) timestep, ``[cos, sin]`` as in DiT/ADM. ``shift`` is
    diffusers' ``downscale_freq_shift`` (its DiT divides the exponent by half - 1, the paper's code
    by half); ``scale`` multiplies the timestep first."""
    freqs = timestep_frequencies(dim, max_period, shift, t.device)
    t = t.float() if scale == 1 else t.float() * scale
    args = t[:, None] * freqs[None]
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
    def __init__(self, hidden: int, frequency_dim: int, shift: float = 0.0, scale: float = 1.0):
        super().__init__()
        self.frequency_dim, self.shift, self.scale = frequency_dim, shift, scale
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t: Tensor) -> Tensor:
        features = timestep_embedding(t, self.frequency_dim, shift=self.shift, scale=self.scale)
        return self.mlp(features.to(self.mlp[0].weight.dtype))


class SizeEmbedder(nn.Module):
    """PixArt-alpha's micro-conditions: height and width (pixels) through one sinusoid MLP, the
    aspect ratio (height / width) through another, each to a third of the hidden width; the
    concatenation (B, D) is added to the timestep embedding."""

    def __init__(self, hidden: int, frequency_dim: int):
        super().__init__()
        self.resolution = TimestepEmbedder(hidden // 3, frequency_dim)
        self.aspect_ratio = TimestepEmbedder(hidden // 3, frequency_dim)

    def forward(self, resolution: Tensor, aspect_ratio: Tensor) -> Tensor:
        b = resolution.shape[0]
        size = self.resolution(resolution.reshape(-1)).reshape(b, -1)  # (B, 2D/3): height, width
        ratio = self.aspect_ratio(aspect_ratio.reshape(-1)).reshape(b, -1)  # (B, D/3)
        return torch.cat([size, ratio], dim=-1)  # (B, D)


def gelu_tanh(x: Tensor) -> Tensor:
    """DiT's tanh-approximated GELU. In bfloat16 on the CPU the exact (erf) GELU stands in for it:
    ATen's bfloat16 tanh-GELU takes ~4x as long there (forward and backward, a tenth of a DiT-S/2
    training step), and the two functions differ by at most 4.7e-4 (at x = -2.7), below bfloat16's
    resolution at the activations' scale: over unit-Gaussian inputs the bfloat16 erf-GELU is off
    the tanh-GELU by 8.57e-4 on average, bfloat16 rounding of the tanh-GELU itself by 8.46e-4."""
    exact = x.device.type == "cpu" and x.dtype == torch.bfloat16
    return F.gelu(x, approximate="none" if exact else "tanh")


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, out: int | None = None):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, out or dim)

    def forward(self, x):
        return self.fc2(gelu_tanh(self.fc1(x)))


class DiTBlock(nn.Module):
    """adaLN-Zero block: modulated self-attention, optional cross-attention, modulated MLP. The
    modulation is the block's own projection of the conditioning ``c`` (B, D), or with
    ``adaln="single"`` (PixArt) the model's shared projection ``c`` (B, 1, 6D) plus the block's table."""

    def __init__(self, config: DiTConfig, mode: str = "joint"):
        super().__init__()
        d = config.hidden_size
        self.mode = mode
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False, eps=config.attention_norm_eps)
        self.attn = Attention(d, config.num_heads, config.qk_norm)
        self.cross = bool(config.context_dim) and (mode != "temporal" or config.temporal_cross_attention)
        if self.cross:
            self.norm_cross = nn.LayerNorm(d, eps=1e-6) if config.context_norm else nn.Identity()
            kv_dim = d if config.context_projection else config.context_dim
            self.cross_attn = Attention(d, config.num_heads, config.qk_norm, context_dim=kv_dim)
        self.norm2 = nn.LayerNorm(d, elementwise_affine=False, eps=config.mlp_norm_eps)
        self.mlp = Mlp(d, int(d * config.mlp_ratio))
        self.single = config.adaln == "single"
        if self.single:
            self.scale_shift_table = nn.Parameter(torch.zeros(6, d))
        else:
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))

    def modulation(self, c: Tensor, dtype: torch.dtype) -> Tensor:
        """(B, 1, 6D): shift, scale and gate of the attention, then of the MLP."""
        if self.single:
            return (c + self.scale_shift_table.flatten()).to(dtype)
        return per_sample(self.adaLN_modulation, c, dtype)

    def forward(self, x, c, grid=None, rope=None, mask=None, causal=False, context=None, context_mask=None):
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(c, x.dtype).chunk(6, dim=-1)
        mode = self.mode if grid is not None else "joint"
        h = self.attn(modulate(self.norm1(x), shift1, scale1), mode=mode, grid=grid, rope=rope, mask=mask,
                      causal=causal)
        x = torch.addcmul(x, gate1, h)
        if context is not None and self.cross:
            x = x + self.cross_attn(self.norm_cross(x), context=context, mask=context_mask)
        return torch.addcmul(x, gate2, self.mlp(modulate(self.norm2(x), shift2, scale2)))


class FinalLayer(nn.Module):
    """Modulated LayerNorm and a linear map to ``out_dim`` values per token. With learned sigma the
    linear map holds ``out_dim`` more rows, the variance channels after the eps ones (tokens are
    channel-major), and only the eps rows are computed."""

    def __init__(self, config: DiTConfig, out_dim: int):
        super().__init__()
        d = config.hidden_size
        self.out_dim, self.learned_sigma = out_dim, config.learned_sigma
        self.norm = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(d, 2 * out_dim if config.learned_sigma else out_dim)
        self.single = config.adaln == "single"
        if self.single:
            self.scale_shift_table = nn.Parameter(torch.zeros(2, d))
        else:
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * d))

    def modulation(self, c: Tensor, dtype: torch.dtype) -> Tensor:
        """(B, 1, 2D) shift and scale; PixArt adds its table to the embedded timestep itself."""
        if self.single:
            return (self.scale_shift_table.flatten() + c.repeat(1, 2))[:, None].to(dtype)
        return per_sample(self.adaLN_modulation, c, dtype)

    def forward(self, x, c):
        shift, scale = self.modulation(c, x.dtype).chunk(2, dim=-1)
        h = modulate(self.norm(x), shift, scale)
        if self.learned_sigma:
            return F.linear(h, self.linear.weight[: self.out_dim], self.linear.bias[: self.out_dim])
        return self.linear(h)


def pooled(context: Tensor, mask: Tensor | None) -> Tensor:
    """(B, D): the mean of the context's tokens, over the real ones (mask 1) when masked."""
    if mask is None:
        return context.float().mean(1)
    weights = mask.float()[..., None]
    return (context.float() * weights).sum(1) / weights.sum(1).clamp(min=1)


class DiT(PretrainedMixin, nn.Module):
    """``model(x, timestep, class_labels=None, context=None, context_mask=None, given=None,
    attention_mask=None, resolution=None, aspect_ratio=None)`` -> output shaped like ``x`` (with
    ``out_channels`` channels). Masks are per key, 1/True = attend; ``resolution`` (B, 2) [height,
    width] and ``aspect_ratio`` (B, 1) only for a model with ``size_conditioning``."""

    config_class = DiTConfig

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = config
        d, pc = config.hidden_size, config.patch
        self.patcher = build_patcher(pc, d)
        out_channels = config.out_channels or pc.channels
        self.out_dim = self.patcher.token_dim // pc.channels * out_channels
        self.x_embedder = nn.Linear(self.patcher.token_dim, d)
        self.t_embedder = TimestepEmbedder(d, config.frequency_dim, config.frequency_shift, config.timestep_scale)
        if config.size_conditioning:
            self.size_embedder = SizeEmbedder(d, config.frequency_dim)
        if config.adaln == "single":
            self.adaLN_single = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))
        if config.context_projection:
            self.context_embedder = Mlp(config.context_dim, d, d)
        if config.pooled_context:
            self.pooled_embedder = Mlp(config.context_dim, d, d)
        if config.num_classes:
            # The null class (index num_classes) exists only when labels are dropped in training.
            self.y_embedder = nn.Embedding(config.num_classes + int(config.class_dropout > 0), d)
        if config.given_embedding:
            self.given_embed = nn.Parameter(torch.zeros(d))
        modes = ["spatial", "temporal"] if config.attention == "factorized" else ["joint"]
        self.blocks = nn.ModuleList(DiTBlock(config, modes[i % len(modes)]) for i in range(config.depth))
        self.final_layer = FinalLayer(config, self.out_dim)
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
        # adaLN-single's tables start at zero, so zeroing its shared projection zeroes every gate too.
        modulations = [self.adaLN_single] if self.config.adaln == "single" else [
            m.adaLN_modulation for m in (*self.blocks, self.final_layer)]
        for layer in (*(m[-1] for m in modulations), self.final_layer.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def condition(self, timestep: Tensor, class_labels: Tensor | None, resolution: Tensor | None = None,
                  aspect_ratio: Tensor | None = None) -> Tensor:
        c = self.t_embedder(timestep)  # (B, D)
        if self.config.size_conditioning:
            c = c + self.size_condition(resolution, aspect_ratio, len(c))
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

    def size_condition(self, resolution: Tensor | None, aspect_ratio: Tensor | None, batch: int) -> Tensor:
        """Embedded micro-conditions (B, D); one row of values serves the whole batch."""
        if resolution is None or aspect_ratio is None:
            raise ValueError("this model is conditioned on the image size (PixArt-alpha's micro-conditions): "
                             "pass resolution=[height, width] in pixels and aspect_ratio=height / width, "
                             "per sample as (B, 2) and (B, 1) or one row for all")
        device = self.t_embedder.mlp[0].weight.device
        resolution = torch.as_tensor(resolution, device=device).reshape(-1, 2).expand(batch, 2)
        aspect_ratio = torch.as_tensor(aspect_ratio, device=device).reshape(-1, 1).expand(batch, 1)
        return self.size_embedder(resolution, aspect_ratio)

    def forward(self, x: Tensor, timestep: Tensor, class_labels: Tensor | None = None,
                context: Tensor | None = None, context_mask: Tensor | None = None,
                given: Tensor | None = None, attention_mask: Tensor | None = None,
                resolution: Tensor | None = None, aspect_ratio: Tensor | None = None) -> Tensor:
        timestep = torch.as_tensor(timestep, device=x.device).reshape(-1).expand(x.shape[0])
        h = self.x_embedder(self.patcher.patchify(x))  # (B, N, D)
        pos = self.patcher.positions(x)
        if pos is not None:
            h = h + pos.to(h.dtype)
        late = self.patcher.late_positions(x)  # Latte: time positions after the first block
        if given is not None and self.config.given_embedding:
            h = h + self.patcher.token_mask(given)[..., None].to(h.dtype) * self.given_embed
        with torch.autocast("cpu", enabled=False):  # B rows: see per_sample
            c = self.condition(timestep, class_labels, resolution, aspect_ratio)  # (B, D)
            if self.config.pooled_context and context is not None:
                c = c + self.pooled_embedder(pooled(context, context_mask).to(c.dtype))
        # adaLN-single: one projection for all blocks, each adds its table in float32 and rounds once
        block_c = per_sample(self.adaLN_single, c, c.dtype) if self.config.adaln == "single" else c
        if context is not None and self.config.context_projection:
            context = self.context_embedder(context)  # (B, M, D)
        grid = self.patcher.grid(x)
        rope = (self.rope_cos, self.rope_sin) if hasattr(self, "rope_cos") else None
        mask = None if attention_mask is None else attention_mask.bool()[:, None, None, :]
        cmask = None if context_mask is None else context_mask.bool()[:, None, None, :]
        causal = self.config.attention == "causal"
        for i, block in enumerate(self.blocks):
            args = (h, block_c, grid, rope, mask, causal, context, cmask)
            if self.config.gradient_checkpointing and self.training:
                h = checkpoint(block, *args, use_reentrant=False)
            else:
                h = block(*args)
            if i == 0 and late is not None:
                h = h + late.to(h.dtype)
        out = self.final_layer(h, c)  # (B, N, out_dim)
        return self.patcher.unpatchify(out, x)
