"""Training on clips: per-frame latents (any image autoencoder), tubelet tokens for the DiT with
frame attention, and image-to-video training by given frames; with ``--text_encoder``, prompts
(captions, or class names through ``--prompt_template``) in place of labels (``prompts.py``).

Given frames stay clean (zero noise) in training, are left out of the loss and are flagged to the
DiT through ``given=``; at sampling ``keep_known`` holds them fixed (``pipeline.py``).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from ...components.autoencoders import load_autoencoder
from ...core import checks
from ...core.checkpoint import DTYPES
from ...core.patch import PatchConfig
from ...data.video import build_video_dataset
from ..latent_task import CROPS, DiffusionArgs, LatentDiffusionTask
from ..prompts import PromptArgs, PromptTask
from .pipeline import VideoPipeline

ATTENTIONS = ("factorized", "joint")


@dataclass
class VideoArgs(DiffusionArgs, PromptArgs):
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

    def __post_init__(self):
        super().__post_init__()
        for name in ("num_frames", "frame_stride", "resolution", "num_clips", "temporal_patch", "fps"):
            checks.integer(f"--{name}", getattr(self, name), low=1)
        if self.channels is not None:
            checks.choice("--channels", self.channels, (1, 3))
        checks.choice("--crop", self.crop, CROPS)
        checks.number("--max_speed", self.max_speed, low=0)
        checks.choice("--attention", self.attention, ATTENTIONS)
        checks.probability("--given_frames_prob", self.given_frames_prob)
        checks.choice("--export_dtype", self.export_dtype, DTYPES)
        self.check_prompt_args()
        if self.num_frames % self.temporal_patch:
            checks.fail("--num_frames", f"a multiple of --temporal_patch {self.temporal_patch}", self.num_frames)


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


class VideoTask(PromptTask, LatentDiffusionTask):
    modality = "video"
    data_key = "video"
    pipeline_class = VideoPipeline

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
        # the attention layout is the shared --attention option; the context width the prompts'
        return {**super().extra_dit_options(), "given_embedding": True}

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
        n = self.sample_classes()
        out = pipe(**self.class_conditions(list(range(n)) if n else None), num_videos=None if n else 8,
                   generator=0, progress=False)
        clips = [self.dataset[i] for i in range(4)]
        firsts = torch.stack([c[self.data_key][0] for c in clips])  # (4, C, H, W)
        i2v = pipe(**self.class_conditions([int(c["label"]) for c in clips] if n else None), first_frame=firsts,
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
        return self.pipeline(model).save_pretrained(folder, dtype=DTYPES[self.args.export_dtype])
