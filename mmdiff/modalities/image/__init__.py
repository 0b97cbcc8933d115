"""The 2-D image modality: images -> latents (an autoencoder) -> patches (the core DiT) and back.

    pipe = mmdiff.pipeline("image")                       # the shipped digits model
    images = pipe(class_labels=[3, 7], num_inference_steps=25, guidance_scale=2.0)
    pipe.save_grid(images, "digits.png")

``task.py`` is what training needs, ``pipeline.py`` what sampling needs.
"""
from .pipeline import ImagePipeline
from . import pretrained  # noqa: F401  (registers diffusers' DiT and PixArt pipelines with mmdiff.pretrained)
from .task import ImageArgs, ImageTask

__all__ = ["ImageArgs", "ImagePipeline", "ImageTask"]
