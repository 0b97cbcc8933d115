"""mmdiff: diffusion models for images, video and text on one core.

    import mmdiff
    pipe = mmdiff.pipeline("image")          # the small shipped digits model
    images = pipe(class_labels=[3, 7], num_inference_steps=25)
"""
__version__ = "0.1.0"

from . import modalities  # noqa: E402,F401  (registers every modality's pipeline)
from .options import SamplingOptions  # noqa: E402,F401
from .registry import pipeline  # noqa: E402,F401
