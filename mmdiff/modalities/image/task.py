"""Training images: the data, the autoencoder, the patch geometry and validation grids; with a
text encoder, prompts (captions, or class names through a template) in place of labels."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from ...components.autoencoders import load_autoencoder
from ...components.encoders import TextEncoder
from ...core import checks
from ...core.patch import PatchConfig
from ...data.images import build_image_dataset
from ...media import save_image_grid
from ..latent_task import CROPS, DiffusionArgs, LatentDiffusionTask
from .pipeline import ImagePipeline


@dataclass
class ImageArgs(DiffusionArgs):
    resolution: int = field(default=8, metadata={"help": "images are resized/cropped to this size"})
    channels: int | None = field(default=None, metadata={"help": "1 or 3 (default: the data's)"})
    crop: str = field(default="center", metadata={"help": "center | random"})
    random_flip: bool = False
    text_encoder: str | None = field(default=None, metadata={
        "help": "local folder of a transformers text encoder: condition on prompts by cross-attention"})
    prompt_template: str = field(default="{label}", metadata={
        "help": "prompt made from a class name when the data has no captions, e.g. 'a photo of a {label}'"})
    max_prompt_length: int = 77

    def __post_init__(self):
        super().__post_init__()
        checks.integer("--resolution", self.resolution, low=1)
        if self.channels is not None:
            checks.choice("--channels", self.channels, (1, 3))
        checks.choice("--crop", self.crop, CROPS)
        checks.integer("--max_prompt_length", self.max_prompt_length, low=1)
        if self.text_encoder and "{label}" not in self.prompt_template:
            checks.fail("--prompt_template", "a template with {label} in it", self.prompt_template,
                        "without it every class gets the same prompt")


class ImageTask(LatentDiffusionTask):
    modality = "image"
    data_key = "image"
    pipeline_class = ImagePipeline

    def __init__(self, args: ImageArgs):
        super().__init__(args)
        self.text_encoder = None

    def setup(self):
        if self.args.text_encoder:
            self.text_encoder = TextEncoder.from_pretrained(self.args.text_encoder,
                                                            max_length=self.args.max_prompt_length)
        super().setup()

    def count_classes(self):
        return 0 if self.text_encoder is not None else super().count_classes()

    def extra_dit_options(self):
        return {"context_dim": self.text_encoder.hidden_size} if self.text_encoder is not None else {}

    def prompts(self, batch: dict) -> list[str]:
        if "caption" in batch:
            return list(batch["caption"])
        return [self.args.prompt_template.format(label=self.class_names[int(i)]) for i in batch["label"]]

    def conditioning(self, batch):
        if self.text_encoder is None:
            return super().conditioning(batch)
        prompts = self.prompts(batch)
        drop = torch.rand(len(prompts)) < self.args.class_dropout  # "" is the unconditional prompt
        self.text_encoder.to(batch[self.data_key].device)
        context, mask = self.text_encoder(["" if d else p for p, d in zip(prompts, drop.tolist())])
        return {"context": context, "context_mask": mask}

    def pipeline(self, model):
        pipe = super().pipeline(model)
        if self.text_encoder is not None:
            pipe.components["text_encoder"] = self.text_encoder
        return pipe

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
        n = self.num_classes or (len(self.class_names) if self.text_encoder is not None else 0)
        per_class = min(8, max(1, 64 // max(n, 1)))
        labels = [i % n for i in range(n * per_class)] if n else None
        if self.text_encoder is not None and labels is not None:
            prompts = [self.args.prompt_template.format(label=self.class_names[i]) for i in labels]
            images = pipe(prompt=prompts, generator=0, progress=False, output_type="pt")
        else:
            images = pipe(class_labels=labels, num_images=None if n else 64, generator=0, progress=False,
                          output_type="pt")
        path = save_image_grid(images, Path(folder) / f"step-{step:08d}.png", nrow=n or 8)
        return {"samples": Image.open(path)}

    def pipeline_extra(self):
        return {**super().pipeline_extra(), "resolution": self.args.resolution}
