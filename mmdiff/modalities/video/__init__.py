"""The video modality: clips -> per-frame latents (any image autoencoder) -> tubelet tokens (the core
DiT with frame attention) and back.

Nothing here is specific to video beyond the tensor layout (B, T, C, H, W): ``PatchConfig("video",
...)`` makes tubelets with separable positions, and the DiT alternates spatial and temporal
attention by regrouping tokens (``attention="factorized"``) or attends over all of them
(``"joint"``). ``task.py`` is what training needs, ``pipeline.py`` what sampling needs.
"""
from .pipeline import VideoOutput, VideoPipeline
from . import pretrained  # noqa: F401  (registers diffusers' Latte pipeline with mmdiff.pretrained)
from .task import ATTENTIONS, VideoArgs, VideoTask, given_frames_mask

__all__ = ["ATTENTIONS", "VideoArgs", "VideoOutput", "VideoPipeline", "VideoTask", "given_frames_mask"]
