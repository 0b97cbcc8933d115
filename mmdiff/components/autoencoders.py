"""Image autoencoders behind one interface: pixels <-> the latents a diffusion model works in.

Every autoencoder answers ``encode(images) -> latents`` and ``decode(latents) -> images``, with
images ``(B, C, H, W)`` in [-1, 1] and latents already scaled for diffusion,
``(z - shift) * scale``, the shift and scale coming from the autoencoder's own config. Plugins and
pipelines therefore never see a scaling constant. ``IdentityAutoencoder`` is pixel space;
``AutoencoderKL`` is the Stable Diffusion VAE, parameter-for-parameter compatible with diffusers'
``AutoencoderKL`` so a ``vae/`` folder from any SD-family model loads into it.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..core.checkpoint import (CONFIG_NAME, PICKLE_SUFFIXES, CheckpointError, PretrainedMixin, check_state_dict,
                               config_from_dict, config_to_dict, load_tensors, read_config_json, resolve_pretrained)
from ..core.samplers import per_sample_generators, randn
from ..registry import register_component
from .vae import AutoencoderKLConfig, Decoder, Encoder

Generators = torch.Generator | list[torch.Generator] | None


# ----------------------------------------------------------------------------- the interface

class Autoencoder(nn.Module, ABC):
    """Base class: batching, dtype handling, posterior sampling and latent scaling live here once;
    a subclass supplies ``_encode_unscaled`` and ``_decode_unscaled`` for one batch chunk."""

    latent_channels: int
    downsample_factor: int
    image_channels: int
    has_posterior_noise = False  # whether encode(sample=True) draws from a posterior
    # Largest chunk along B run through the network at once (None: the whole batch). Results do
    # not depend on it, peak memory does.
    encode_batch_size: int | None = None
    decode_batch_size: int | None = None

    def encode(self, images: torch.Tensor, generator: Generators = None, sample: bool = True) -> torch.Tensor:
        """images (B, C, H, W) in [-1, 1] -> latents (B, c, H/f, W/f) scaled for diffusion, in the
        images' dtype. ``sample=False`` returns the posterior mean; with a list of generators,
        sample i is drawn from generator i alone, so it does not depend on the batch it is in.
        More leading dims, e.g. video (B, T, C, H, W), are encoded frame by frame (one generator
        per frame when a list is given)."""
        self._check(images, self.image_channels, "encode", "images (B, {}, H, W)")
        x = images.flatten(0, -4)  # (N, C, H, W)
        device, dtype = self._compute_device_dtype(images)
        noise = None
        if sample and self.has_posterior_noise:
            noise = posterior_noise(self.latent_shape(x.shape), generator, device, dtype)
        x = x.to(device, dtype)
        z = torch.cat([self._encode_unscaled(x[i], None if noise is None else noise[i])
                       for i in _chunks(len(x), self.encode_batch_size)])
        shift, scale = self._latent_shift_scale(z)
        latents = ((z - shift) * scale).to(images.dtype).contiguous()
        return latents.unflatten(0, images.shape[:-3])

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents (B, c, h, w) as returned by ``encode`` -> images (B, C, h*f, w*f), roughly in
        [-1, 1], in the latents' dtype. Leading dims are handled as in ``encode``."""
        self._check(latents, self.latent_channels, "decode", "latents (B, {}, h, w)")
        z = latents.flatten(0, -4)  # (N, c, h, w)
        device, dtype = self._compute_device_dtype(latents)
        z = z.to(device, dtype)
        shift, scale = self._latent_shift_scale(z)
        z = z / scale + shift
        images = torch.cat([self._decode_unscaled(z[i]) for i in _chunks(len(z), self.decode_batch_size)])
        return images.to(latents.dtype).unflatten(0, latents.shape[:-3])

    def latent_shape(self, image_shape: tuple[int, ...] | torch.Size) -> tuple[int, ...]:
        """(B, C, H, W) -> (B, latent_channels, H/f, W/f)."""
        *batch, _, h, w = image_shape
        f = self.downsample_factor
        return (*batch, self.latent_channels, h // f, w // f)

    def fingerprint(self) -> str:
        """sha256 over class, config and every tensor (name, dtype, shape, bytes): two autoencoders
        with the same fingerprint produce the same latents, so a latent cache can be checked."""
        h = hashlib.sha256(type(self).__name__.encode())
        h.update(json.dumps(config_to_dict(self.config), sort_keys=True).encode())
        for name, t in self.state_dict().items():
            t = t.detach().to("cpu").contiguous()
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    # -- hooks for subclasses

    @abstractmethod
    def _encode_unscaled(self, images: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        ...

    @abstractmethod
    def _decode_unscaled(self, z: torch.Tensor) -> torch.Tensor:
        ...

    def _latent_shift_scale(self, like: torch.Tensor):
        """(shift, scale) with latents = (z - shift) * scale; floats or tensors broadcastable to z."""
        return 0.0, 1.0

    def _compute_device_dtype(self, x: torch.Tensor) -> tuple[torch.device, torch.dtype]:
        """Where and in what dtype the network runs: the weights' own, or the input's when the
        autoencoder has no weights."""
        p = next(self.parameters(), None)
        return (x.device, x.dtype) if p is None else (p.device, p.dtype)

    # -- input checks, so a wrong tensor fails here and not deep inside a conv

    def _check(self, x: torch.Tensor, channels: int, method: str, expected: str) -> None:
        name = f"{type(self).__name__}.{method}"
        if x.ndim < 4 or x.shape[-3] != channels:
            raise ValueError(f"{name} expects {expected.format(channels)}, got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"{name} expects a floating tensor (images in [-1, 1]), got {x.dtype}")
        f = self.downsample_factor
        if method == "encode" and (x.shape[-2] % f or x.shape[-1] % f):
            raise ValueError(f"{name}: height and width must be multiples of the downsample factor {f}, "
                             f"got {tuple(x.shape[-2:])}")


def _chunks(n: int, size: int | None) -> list[slice]:
    size = n if not size else size
    return [slice(i, i + size) for i in range(0, n, size)] or [slice(0, 0)]


def posterior_noise(shape: tuple[int, ...], generator: Generators, device: torch.device,
                    dtype: torch.dtype) -> torch.Tensor:
    """Standard normal noise of ``shape``. A list of generators gives row i from generator i (the
    core's per-sample noise); one generator draws the whole tensor on its own device, as diffusers'
    ``latent_dist.sample(generator)`` does, so the same seed gives diffusers' latents."""
    if isinstance(generator, (list, tuple)):
        return randn(shape, per_sample_generators(generator, shape[0]), device=device, dtype=dtype)
    draw_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=draw_device, dtype=dtype).to(device)


# ----------------------------------------------------------------------------- pixel space

@dataclass
class IdentityConfig:
    channels: int = 3


@register_component
class IdentityAutoencoder(PretrainedMixin, Autoencoder):
    """Pixel space: latents are the images themselves (factor 1, no scaling)."""

    config_class = IdentityConfig

    def __init__(self, config: IdentityConfig | int = 3):
        super().__init__()
        self.config = config if isinstance(config, IdentityConfig) else IdentityConfig(channels=config)
        self.image_channels = self.latent_channels = self.config.channels
        self.downsample_factor = 1

    def _encode_unscaled(self, images, noise):
        return images

    def _decode_unscaled(self, z):
        return z


# ----------------------------------------------------------------------------- the SD-family VAE

# The posterior log-variance is clamped to this range before exp() so a bad input cannot overflow
# (diffusers' DiagonalGaussianDistribution).
LOGVAR_RANGE = (-30.0, 20.0)
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model"
# Attention weight names of diffusers checkpoints saved before its attention refactor; SD 1.x
# vae/ folders on the Hub still carry them.
LEGACY_ATTENTION_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


@register_component
class AutoencoderKL(PretrainedMixin, Autoencoder):
    """The Stable Diffusion VAE; parameter names equal diffusers' ``AutoencoderKL`` state dict."""

    config_class = AutoencoderKLConfig
    has_posterior_noise = True

    def __init__(self, config: AutoencoderKLConfig):
        super().__init__()
        self.config = config
        self.image_channels, self.latent_channels = config.in_channels, config.latent_channels
        self.downsample_factor = 2 ** (len(config.block_out_channels) - 1)
        c = config.latent_channels
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quant_conv = nn.Conv2d(2 * c, 2 * c, 1) if config.use_quant_conv else None
        self.post_quant_conv = nn.Conv2d(c, c, 1) if config.use_post_quant_conv else None

    def posterior(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B, C, H, W), in the dtype ``encode`` computes in -> (mean, std) of the diagonal
        Gaussian posterior over unscaled z (useful for a KL term; ``encode`` is the usual entry)."""
        moments = self._run(self.encoder, images)
        if self.quant_conv is not None:
            moments = self._run(self.quant_conv, moments)
        mean, logvar = moments.chunk(2, dim=1)
        return mean, torch.exp(0.5 * logvar.clamp(*LOGVAR_RANGE))

    def _encode_unscaled(self, images, noise):
        mean, std = self.posterior(images)
        return mean if noise is None else mean + std * noise

    def _decode_unscaled(self, z):
        if self.post_quant_conv is not None:
            z = self._run(self.post_quant_conv, z)
        return self._run(self.decoder, z)

    def _latent_shift_scale(self, like):
        cfg = self.config

        def as_channels(values):  # per-channel statistics, broadcast over (B, c, h, w)
            return torch.tensor(values, device=like.device, dtype=like.dtype).view(1, -1, 1, 1)

        shift = as_channels(cfg.latents_mean) if cfg.latents_mean is not None else (cfg.shift_factor or 0.0)
        scale = cfg.scaling_factor / as_channels(cfg.latents_std) if cfg.latents_std is not None else cfg.scaling_factor
        return shift, scale

    def _compute_device_dtype(self, x):
        device, dtype = super()._compute_device_dtype(x)
        return device, torch.float32 if self._upcast(dtype) else dtype

    def _upcast(self, dtype: torch.dtype) -> bool:
        """SD-family VAEs overflow in fp16 and lose detail in bf16; diffusers marks them with
        ``force_upcast``, and then half-precision weights are run in fp32."""
        return self.config.force_upcast and dtype in (torch.float16, torch.bfloat16)

    def _run(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``module(x)``, through fp32 copies of its weights when upcasting. The module itself is
        never cast, so this is safe under autograd, inference mode and concurrent calls."""
        if not self._upcast(next(module.parameters()).dtype):
            return module(x)
        fp32 = {name: w.float() for name, w in module.named_parameters()}
        return torch.func.functional_call(module, fp32, (x,))

    # -- loading diffusers folders

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, *, subfolder: str | None = None,
                        dtype: torch.dtype | None = None, device: str | torch.device | None = None):
        """Our own folder (``config.json`` + ``model.safetensors``) or a diffusers ``vae/`` folder."""
        folder = resolve_pretrained(folder, subfolder)
        if _is_diffusers_folder(folder):
            return cls.from_diffusers(folder, dtype=dtype, device=device)
        return super().from_pretrained(folder, dtype=dtype, device=device)

    @classmethod
    def from_diffusers(cls, folder: str | os.PathLike, *, subfolder: str | None = None, variant: str | None = None,
                       dtype: torch.dtype | None = None, device: str | torch.device | None = None):
        """Load a diffusers ``AutoencoderKL`` folder (``config.json`` with ``_class_name`` plus
        ``diffusion_pytorch_model[.variant].safetensors``); pickle weights are refused."""
        folder = resolve_pretrained(folder, subfolder)
        raw = read_config_json(folder)
        if raw.get("_class_name") != "AutoencoderKL":
            raise CheckpointError(f"{folder / CONFIG_NAME} describes a diffusers "
                                  f"'{raw.get('_class_name')}', not an AutoencoderKL")
        config = config_from_dict(AutoencoderKLConfig, raw, source=str(folder / CONFIG_NAME))
        weights = _diffusers_weights_file(folder, variant)
        tensors, _ = load_tensors(weights)
        return _build_loaded(cls, config, _rename_legacy_attention(tensors), str(weights), dtype, device)


def _is_diffusers_folder(folder: Path) -> bool:
    return (folder / CONFIG_NAME).is_file() and "_class_name" in read_config_json(folder)


def _diffusers_weights_file(folder: Path, variant: str | None) -> Path:
    stem = DIFFUSERS_WEIGHTS if variant is None else f"{DIFFUSERS_WEIGHTS}.{variant}"
    safetensors = folder / f"{stem}.safetensors"
    pickled = [folder / f"{stem}{suffix}" for suffix in PICKLE_SUFFIXES]
    if not safetensors.is_file() and any(p.is_file() for p in pickled):
        return next(p for p in pickled if p.is_file())  # load_tensors refuses it with the reason
    return safetensors


def _rename_legacy_attention(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    renamed = {}
    for name, t in tensors.items():
        parent, _, leaf = name.rpartition(".")
        owner, _, old = parent.rpartition(".")
        if ".attentions." in name and old in LEGACY_ATTENTION_NAMES:
            name = f"{owner}.{LEGACY_ATTENTION_NAMES[old]}.{leaf}"
        renamed[name] = t
    return renamed


def _build_loaded(cls, config, tensors: dict[str, torch.Tensor], source: str, dtype, device):
    """Build ``cls(config)`` without allocating, check every tensor and adopt them."""
    with torch.device("meta"):
        model = cls(config)
    check_state_dict(model.state_dict(), tensors, source)
    model.load_state_dict(tensors, strict=True, assign=True)
    if dtype is not None or device is not None:
        model.to(device=device, dtype=dtype)
    return model.eval()


# ----------------------------------------------------------------------------- loading by name

AUTOENCODERS: dict[str, type[Autoencoder]] = {
    "IdentityAutoencoder": IdentityAutoencoder,
    "AutoencoderKL": AutoencoderKL,
}
IDENTITY_PREFIX = "identity:"


def load_autoencoder(name_or_path: str | os.PathLike, *, dtype: torch.dtype | None = None,
                     device: str | torch.device | None = None) -> Autoencoder:
    """``"identity:<channels>"`` for pixel space, or a folder: one written by ``save_pretrained``,
    a diffusers ``vae/`` folder, or a diffusers pipeline folder holding ``vae/``."""
    if isinstance(name_or_path, str) and name_or_path.startswith(IDENTITY_PREFIX):
        channels = name_or_path[len(IDENTITY_PREFIX):]
        if not channels.isdigit() or int(channels) < 1:
            raise ValueError(f"'{name_or_path}': expected '{IDENTITY_PREFIX}<channels>', e.g. 'identity:3'")
        return IdentityAutoencoder(int(channels)).to(device=device)
    folder = resolve_pretrained(name_or_path)
    if not (folder / CONFIG_NAME).is_file() and (folder / "vae" / CONFIG_NAME).is_file():
        folder = folder / "vae"
    raw = read_config_json(folder)
    name = raw.get("_class") or raw.get("_class_name")
    if name not in AUTOENCODERS:
        raise CheckpointError(f"{folder / CONFIG_NAME} describes '{name}', which is not an autoencoder "
                              f"mmdiff knows; known: {sorted(AUTOENCODERS)}")
    return AUTOENCODERS[name].from_pretrained(folder, dtype=dtype, device=device)
