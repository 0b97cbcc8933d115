"""The video modality: clips -> per-frame latents (any image autoencoder) -> tubelet tokens (the core
DiT with frame attention) and back.

    pipe = mmdiff.pipeline("video")                          # the shipped moving-digits model
    out = pipe(class_labels=[3, 7], num_frames=16, guidance_scale=2.0)
    out.save("digits.mp4")                                   # .gif, .webm, .png (a strip per video)
    out = pipe(first_frame=Image.open("frame.png"))          # image-to-video

Nothing here is specific to video beyond the tensor layout (B, T, C, H, W): frames go through the
image autoencoder frame by frame, ``PatchConfig("video", ...)`` makes tubelets with separable
positions, and the DiT alternates spatial and temporal attention by regrouping tokens
(``attention="factorized"``) or attends over all of them (``"joint"``). Image-to-video is the core's
given-content path: given frames stay clean (zero noise) in training, are left out of the loss and
are flagged to the DiT through ``given=``; at sampling ``keep_known`` holds them fixed.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from ..core.patch import PatchConfig
from ..data.video import build_video_dataset
from ..media import save_image_grid, save_video, save_video_grid, to_pil
from ..pipelines import register_pipeline
from .autoencoders import load_autoencoder
from .base import DiffusionArgs, LatentDiffusionTask
from .image import ASSETS, ImagePipeline

ATTENTIONS = ("factorized", "joint")
DEFAULT_MODEL = ASSETS / "video-moving-digits"
EXPORT_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class VideoArgs(DiffusionArgs):
    data: str = field(default="moving-digits", metadata={"help": "moving-digits, a video folder, or a HF data set"})
    num_frames: int = field(default=16, metadata={"help": "frames per training clip (the most a sample can have)"})
    frame_stride: int = field(default=1, metadata={"help": "take every n-th frame of a video file"})
    resolution: int = field(default=16, metadata={"help": "frames are resized/cropped to this size"})
    channels: int | None = field(default=None, metadata={"help": "1 or 3 (default: the data's)"})
    crop: str = field(default="center", metadata={"help": "center | random (video files)"})
    random_flip: bool = False
    num_clips: int = field(default=4096, metadata={"help": "moving-digits: clips per epoch"})
    max_speed: float = field(default=3.0, metadata={
        "help": "moving-digits: top speed in px/frame (speeds are uniform in [max/3, max]; 0 = still digits)"})
    temporal_patch: int = field(default=1, metadata={"help": "frames per tubelet"})
    attention: str = field(default="factorized", metadata={"help": "factorized (spatial/temporal blocks) | joint"})
    given_frames_prob: float = field(default=0.5, metadata={"help": "share of clips trained with given frames"})
    fps: int = field(default=8, metadata={"help": "frame rate of saved samples"})
    export_dtype: str = field(default="float32", metadata={"help": "float32 | float16 | bfloat16 export weights"})


def given_frames_mask(batch: int, frames: int, generator: torch.Generator | None = None,
                      device=None) -> torch.Tensor:
    """Which frames of each clip are given (B, T) bool, for image-to-video training: the first
    frame (half the clips), a prefix of 1..T-1 frames (a quarter) or a random subset (a quarter),
    never every frame."""
    if frames == 1:  # a single frame is always generated
        return torch.zeros(batch, 1, dtype=torch.bool, device=device)
    u = torch.rand(batch, generator=generator)
    first = torch.zeros(batch, frames, dtype=torch.bool)
    first[:, 0] = True
    length = torch.randint(1, max(frames, 2), (batch, 1), generator=generator)
    prefix = torch.arange(frames)[None] < length
    subset = torch.rand(batch, frames, generator=generator) < 0.25
    subset[torch.arange(batch), torch.randint(frames, (batch,), generator=generator)] = True
    mask = torch.where((u < 0.5)[:, None], first, torch.where((u < 0.75)[:, None], prefix, subset))
    mask[mask.all(1), -1] = False  # something is always left to generate
    return mask.to(device)


class VideoTask(LatentDiffusionTask):
    modality = "video"
    data_key = "video"

    def __init__(self, args: VideoArgs):
        if args.attention not in ATTENTIONS:
            raise ValueError(f"unknown --attention '{args.attention}'; choose one of {ATTENTIONS}")
        if not 0 <= args.given_frames_prob <= 1:
            raise ValueError(f"--given_frames_prob must be in [0, 1], got {args.given_frames_prob}")
        if args.export_dtype not in EXPORT_DTYPES:
            raise ValueError(f"unknown --export_dtype '{args.export_dtype}'; choose one of {list(EXPORT_DTYPES)}")
        super().__init__(args)
        self.pipeline_class = VideoPipeline

    def build_dataset(self):
        a = self.args
        if a.data == "moving-digits":
            kw = {"num_clips": a.num_clips, "max_speed": a.max_speed}
        else:
            kw = {"crop": a.crop, "random_flip": a.random_flip}
        dataset = build_video_dataset(a.data, num_frames=a.num_frames, resolution=a.resolution, channels=a.channels,
                                      frame_stride=a.frame_stride, **kw)
        skipped = getattr(dataset, "skipped", [])
        if skipped:
            warnings.warn(f"{len(skipped)} undecodable video(s) skipped in {a.data}, first: {skipped[0][0]} "
                          f"({skipped[0][1]}); training on the {len(dataset)} that decode")
        return dataset

    def build_autoencoder(self):
        a = self.args
        return load_autoencoder(a.autoencoder if a.autoencoder != "identity" else f"identity:{self.dataset.channels}")

    def example_shape(self):
        """(T, C, H, W) of a clip, from the options (no decoding needed)."""
        return (self.args.num_frames, self.dataset.channels, self.args.resolution, self.args.resolution)

    def patch_config(self, latent_shape):
        t, c, h, w = latent_shape
        return PatchConfig("video", c, (t, h, w), temporal_patch=self.args.temporal_patch)

    def extra_dit_options(self):
        return {"attention": self.args.attention, "given_embedding": True}

    def training_extras(self, x0):
        """Image-to-video training: a share of the clips gets given frames, which are kept clean
        (zero noise), flagged to the model (``given``) and left out of the loss (``mask``)."""
        b, t = x0.shape[:2]
        given = given_frames_mask(b, t, device=x0.device)
        given &= (torch.rand(b, device=x0.device) < self.args.given_frames_prob)[:, None]
        given = given.view(b, t, 1, 1, 1).expand_as(x0).float()  # (B, T, C, h, w), 1 = given
        noise = torch.randn_like(x0) * (1 - given)
        return {"noise": noise, "mask": 1 - given, "given": given}

    def validation(self, model, step, folder):
        """Class-conditional samples (one per class) and image-to-video samples from the first
        frames of training clips, saved as mp4, gif and a png strip per video."""
        pipe = self.pipeline(model)
        n = self.num_classes
        out = pipe(class_labels=list(range(n)) if n else None, num_videos=None if n else 8, generator=0,
                   progress=False)
        clips = [self.dataset[i] for i in range(4)]
        firsts = torch.stack([c[self.data_key][0] for c in clips])  # (4, C, H, W)
        i2v = pipe(class_labels=[int(c["label"]) for c in clips] if n else None, first_frame=firsts,
                   generator=1, progress=False)
        folder = Path(folder)
        scale = max(1, 128 // self.args.resolution)
        for name, result in ((f"step-{step:08d}", out), (f"step-{step:08d}-i2v", i2v)):
            for suffix in (".mp4", ".gif"):
                result.save(folder / f"{name}{suffix}", scale=scale)
            result.save(folder / f"{name}.png")
        return {"samples": Image.open(folder / f"step-{step:08d}.png"),
                "image_to_video": Image.open(folder / f"step-{step:08d}-i2v.png")}

    def pipeline_extra(self):
        a = self.args
        return {**super().pipeline_extra(), "resolution": a.resolution, "fps": a.fps}

    def export(self, model, folder):
        return self.pipeline(model).save_pretrained(folder, dtype=EXPORT_DTYPES[self.args.export_dtype])


@dataclass
class VideoOutput:
    """Generated clips: ``videos`` (B, T, C, H, W) in [-1, 1]; ``frames`` the same as PIL images."""

    videos: torch.Tensor
    fps: int = 8

    @property
    def frames(self) -> list[list[Image.Image]]:
        return [to_pil(video) for video in self.videos]  # B lists of T images

    def save(self, path, fps: int | None = None, scale: int = 1, nrow: int | None = None) -> Path:
        """``.mp4``/``.webm``/``.gif``: one video, several tiled ``nrow`` per row; ``.png``: a strip
        of frames per video, one row each."""
        path = Path(path)
        fps = fps or self.fps
        if path.suffix.lower() == ".png":
            frames = self.videos.flatten(0, 1)  # (B*T, C, H, W)
            if scale != 1:
                frames = frames.repeat_interleave(scale, -2).repeat_interleave(scale, -1)
            return save_image_grid(frames, path, nrow=self.videos.shape[1])
        if len(self.videos) == 1:
            return save_video(self.videos[0], path, fps=fps, scale=scale)
        return save_video_grid(self.videos, path, nrow=nrow, fps=fps, scale=scale)


@register_pipeline("video")
class VideoPipeline(ImagePipeline):
    """Class-conditional video generation and image-to-video (any given frames). Labels, guidance
    and frame encoding are the image pipeline's; the latent is (T, c, h, w)."""

    @classmethod
    def default(cls, **kwargs):
        if not (DEFAULT_MODEL / "pipeline.json").is_file():
            raise FileNotFoundError(f"the shipped moving-digits model is missing from {DEFAULT_MODEL}; reinstall "
                                    f"mmdiff or pass model=PATH")
        kwargs.setdefault("dtype", torch.float32)  # also upcasts a half-precision export
        return cls.from_pretrained(DEFAULT_MODEL, **kwargs)

    @property
    def max_frames(self) -> int:
        return self.model.config.patch.size[0]

    def latent_shape(self, num_frames: int | None = None) -> tuple[int, ...]:
        pc = self.model.config.patch
        t, h, w = pc.size
        num_frames = t if num_frames is None else num_frames
        if not 1 <= num_frames <= t or num_frames % pc.temporal_patch:
            raise ValueError(f"num_frames must be between 1 and {t} (the trained length)"
                             + (f" and a multiple of {pc.temporal_patch}" if pc.temporal_patch > 1 else "")
                             + f", got {num_frames}")
        return (num_frames, pc.channels, h, w)

    # ``classify`` scores a frame as a still clip of this many frames: temporal attention pools
    # the copies' independent noises. Measured on the shipped model (200 held-out first frames, two
    # seeds): 1 frame 94.5-96% right, 2 frames 96-96.5%, 4 frames 97-97.5% at 4x the cost of 1.
    score_frames: int = 4

    def _as_sample(self, latents):
        frames = min(self.score_frames, self.max_frames)
        return latents[:, None].expand(-1, frames, *latents.shape[1:]).contiguous()

    def _given(self, given_frames: dict, shape: tuple[int, ...]):
        """{frame index: image(s)} -> (known latents, mask) shaped like the latent batch."""
        known, mask = torch.zeros(shape, device=self.device), torch.zeros(shape, device=self.device)
        frame_shape = (shape[0], *shape[2:])
        for index, image in given_frames.items():
            if not -shape[1] <= index < shape[1]:
                raise ValueError(f"given frame {index} is outside the {shape[1]} frames being generated")
            latents = self._image_latents(image, frame_shape)
            if latents.shape[0] != shape[0]:
                raise ValueError(f"given frame {index} has {latents.shape[0]} images for {shape[0]} videos")
            known[:, index] = latents
            mask[:, index] = 1
        return known, mask

    @torch.no_grad()
    def __call__(self, class_labels=None, *, num_videos: int | None = None, num_frames: int | None = None,
                 first_frame=None, given_frames: dict | None = None, num_inference_steps: int | None = None,
                 guidance_scale: float | None = None, guidance_rescale: float = 0.0, sampler: str | None = None,
                 spacing: str | None = None, generator=None, output_type: str = "pil", progress: bool = True,
                 infer_label: bool = True, **sampler_options):
        """``class_labels`` (ints or class names) or ``num_videos`` (unconditional). ``first_frame``
        (a PIL image, a list of them, or a tensor (C, H, W) / (B, C, H, W) in [-1, 1]) or
        ``given_frames={index: image, ...}`` are kept as given and the rest is generated. Given
        frames without labels: a class-conditional model first infers each video's class from them
        (``classify``, the model's own likelihood) and generates for it, or with
        ``infer_label=False`` samples with the null label, unguided. ``num_frames`` may be any
        length up to the trained one. Returns a ``VideoOutput`` (``.frames``, ``.videos``,
        ``.save``), or the (B, T, C, H, W) tensor with ``output_type="pt"``."""
        if output_type not in ("pil", "pt"):
            raise ValueError(f"output_type must be 'pil' or 'pt', got {output_type!r}")
        if num_inference_steps is not None and num_inference_steps <= 0:
            raise ValueError(f"num_inference_steps must be positive, got {num_inference_steps}")
        given_frames = dict(given_frames or {})
        if first_frame is not None:
            given_frames[0] = first_frame
        sizes = {self._batch_of(image) for image in given_frames.values()} - {None}
        if len(sizes) > 1:
            raise ValueError(f"given frames come in different batch sizes {sorted(sizes)}")
        num_videos = num_videos or (sizes.pop() if sizes else None)
        unlabelled = class_labels is None and bool(given_frames)
        # the network alone barely carries a moving digit's shape from a given frame to the others
        # (docs/video.md); its class-conditional path does, so the class is decided first
        infer = unlabelled and infer_label and bool(self.model.config.num_classes)
        null = self.model.null_class
        if infer or (unlabelled and null is not None):
            labels, batch = None, num_videos or 1
        else:
            labels, batch = self._labels(class_labels, num_videos)
        shape = (batch, *self.latent_shape(num_frames))
        known, mask = self._given(given_frames, shape) if given_frames else (None, None)
        if infer:  # from the latents just encoded: no frame goes through the autoencoder twice
            given_index = mask[0, :, 0, 0, 0].nonzero().flatten().tolist()
            labels = sum(self.classify(latents=known[:, i]) for i in given_index).argmax(-1)
        elif unlabelled and null is not None:
            # image-to-video with the null class, and no guidance (cond == uncond)
            labels, guidance_scale = torch.full((batch,), null, device=self.device), 1.0
        kw = dict(cond={"class_labels": labels} if labels is not None else {}, uncond=self._uncond(labels),
                  guidance_scale=guidance_scale, guidance_rescale=guidance_rescale,
                  num_inference_steps=num_inference_steps, sampler=sampler, spacing=spacing, generator=generator,
                  progress=progress, **sampler_options)
        if given_frames:
            latents = self.solve(shape, known=known, mask=mask, mask_kwarg="given", **kw)
        else:
            latents = self.solve(shape, **kw)
        videos = self.autoencoder.decode(latents.to(self.dtype)).float().clamp(-1, 1).cpu()  # (B, T, C, H, W)
        if output_type == "pt":
            return videos
        return VideoOutput(videos, fps=int(self.config.extra.get("fps", 8)))
