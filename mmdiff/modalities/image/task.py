"""Training images: the data, the autoencoder, the patch geometry and validation grids; with a
text encoder, prompts (captions, or class names through a template) in place of labels."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from ...components.autoencoders import load_autoencoder
from ...core import checks
from ...core.patch import PatchConfig
from ...data.images import build_image_dataset
from ...media import save_image_grid
from ..latent_task import CROPS, DiffusionArgs, LatentDiffusionTask
from ..prompts import PromptArgs, PromptTask
from .pipeline import ImagePipeline


@dataclass
class ImageArgs(DiffusionArgs, PromptArgs):
    resolution: int = field(default=8, metadata={"help": "images are resized/cropped to this size"})
    channels: int | None = field(default=None, metadata={"help": "1 or 3 (default: the data's)"})
    crop: str = field(default="center", metadata={"help": "center | random"})
    random_flip: bool = False
    # image models condition on prompts by cross-attention alone unless asked (as before pooling existed)
    pooled_prompt: bool = field(default=False, metadata={
        "help": "also condition the adaLN modulation on the averaged prompt embedding (SD3's pooled text)"})

    def __post_init__(self):
        super().__post_init__()
        checks.integer("--resolution", self.resolution, low=1)
        if self.channels is not None:
            checks.choice("--channels", self.channels, (1, 3))
        checks.choice("--crop", self.crop, CROPS)
        self.check_prompt_args()


class ImageTask(PromptTask, LatentDiffusionTask):
    modality = "image"
    data_key = "image"
    pipeline_class = ImagePipeline

    def build_dataset(self):
        a = self.args
        kw = {"crop": a.crop, "random_flip": a.random_flip} if a.data != "digits" else {}
        return build_image_dataset(a.data, resolution=a.resolution, channels=a.channels, **kw)

    def build_autoencoder(self):
        return load_autoencoder(self.args.autoencoder if self.args.autoencoder != "identity"
                                else f"identity:{self.dataset.channels}")

    def patch_config(self, latent_shape):
        c, h, w = latent_shape
        return PatchConfig("image", c, (h, w))

    def validation(self, model, step, folder):
        pipe = self.pipeline(model)
        n = self.sample_classes()
        per_class = min(8, max(1, 64 // max(n, 1)))
        labels = [i % n for i in range(n * per_class)] if n else None
        images = pipe(**self.class_conditions(labels), num_images=None if n else 64, generator=0, progress=False,
                      output_type="pt")
        path = save_image_grid(images, Path(folder) / f"step-{step:08d}.png", nrow=n or 8)
        return {"samples": Image.open(path)}

    def pipeline_extra(self):
        return {**super().pipeline_extra(), "resolution": self.args.resolution}
