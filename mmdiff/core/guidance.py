"""Wrappers that take a denoiser and return a denoiser: classifier-free guidance and given content.

Samplers never know about either; the same wrappers serve images (inpainting, SDEdit), video
(given frames) and text (prompts and infilling).
"""
from __future__ import annotations

import torch

from .parametrization import append_dims, host_level, tag_level

Tensor = torch.Tensor


def cfg(denoiser, scale: float, cond: dict, uncond: dict, *, rescale: float = 0.0,
        interval: tuple[float, float] | None = None):
    """Classifier-free guidance ``D_u + scale * (D_c - D_u)`` with cond and uncond in one batched
    forward. ``rescale`` (Lin et al. 2023) pulls the guided prediction's per-sample std back to the
    conditional one's; ``interval=(lo, hi)`` guides only for lo < sigma <= hi (Kynkäänniemi et al.
    2024) and spends one forward outside it."""
    keys = [k for k in cond if cond[k] is not None]

    def guided(x: Tensor, sigma: Tensor, **extra) -> Tensor:
        outside = interval is not None and not interval[0] < _level(sigma) <= interval[1]
        if scale == 1.0 or outside:
            return denoiser(x, sigma, **cond, **extra)
        both = {k: torch.cat([cond[k], uncond[k]]) for k in keys}
        extra2 = {k: torch.cat([v, v]) if isinstance(v, Tensor) else v for k, v in extra.items()}
        sigma2, level = torch.cat([sigma, sigma]), host_level(sigma)
        if level is not None:
            tag_level(sigma2, level)
        d_c, d_u = denoiser(torch.cat([x, x]), sigma2, **both, **extra2).chunk(2)
        out = d_u + scale * (d_c - d_u)
        if rescale > 0:
            dims = tuple(range(1, x.ndim))
            ratio = d_c.std(dim=dims, keepdim=True) / out.std(dim=dims, keepdim=True).clamp(min=1e-8)
            out = rescale * out * ratio + (1 - rescale) * out
        return out

    return guided


def _level(sigma) -> float:
    """A batch's level as a number; untagged, read from the device (on a GPU: waits for it)."""
    level = host_level(sigma)
    return float(sigma.reshape(-1)[0]) if level is None else level


def keep_known(denoiser, known: Tensor, mask: Tensor, *, noise: Tensor | None = None,
               mask_kwarg: str | None = None):
    """Hold the region ``mask == 1`` at ``known`` while the rest is sampled.

    The network sees the given region clean (for models trained with given frames/tokens, whose
    mask is passed as ``mask_kwarg``) or, when ``noise`` is given, noised to the current level
    (the "replace" method for models never trained with given content). Its prediction there is
    replaced by ``known``, so every sampler's final step returns ``known`` exactly."""
    mask = mask.to(known.dtype)

    def denoise(x: Tensor, sigma: Tensor, **cond) -> Tensor:
        level = host_level(sigma)
        if noise is None:
            given = known
        elif level is not None:
            given = torch.add(known, noise, alpha=level)
        else:
            given = known + append_dims(sigma.to(known.dtype), known.ndim) * noise
        x_in = torch.lerp(x, given, mask)
        if mask_kwarg is not None:
            cond = {**cond, mask_kwarg: mask}
        return torch.lerp(denoiser(x_in, sigma, **cond), known, mask)

    return denoise


def partial_start(x0: Tensor, sigmas: Tensor, strength: float, noise: Tensor) -> tuple[Tensor, Tensor]:
    """SDEdit (Meng et al. 2022): run only the last ``round(strength * steps)`` steps of ``sigmas``,
    starting from ``x0`` noised to the first of them. Returns ``(x_start, sigmas_tail)``."""
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    steps = len(sigmas) - 1
    run = max(1, round(strength * steps))
    tail = sigmas[steps - run:]
    return x0 + float(tail[0]) * noise, tail
