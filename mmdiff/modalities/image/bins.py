"""PixArt's resolution binning: a requested size is generated at the trained bin of the nearest
aspect ratio, then resized and center-cropped back (diffusers' ``use_resolution_binning``)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

# diffusers' ASPECT_RATIO_1024_BIN, (height, width) in pixels per height / width; its 512 and 256
# px bins are these halved and quartered
ASPECT_RATIO_1024_BIN = {
    "0.25": (512, 2048), "0.28": (512, 1856), "0.32": (576, 1792), "0.33": (576, 1728), "0.35": (576, 1664),
    "0.4": (640, 1600), "0.42": (640, 1536), "0.48": (704, 1472), "0.5": (704, 1408), "0.52": (704, 1344),
    "0.57": (768, 1344), "0.6": (768, 1280), "0.68": (832, 1216), "0.72": (832, 1152), "0.78": (896, 1152),
    "0.82": (896, 1088), "0.88": (960, 1088), "0.94": (960, 1024), "1.0": (1024, 1024), "1.07": (1024, 960),
    "1.13": (1088, 960), "1.21": (1088, 896), "1.29": (1152, 896), "1.38": (1152, 832), "1.46": (1216, 832),
    "1.67": (1280, 768), "1.75": (1344, 768), "2.0": (1408, 704), "2.09": (1472, 704), "2.4": (1536, 640),
    "2.5": (1600, 640), "3.0": (1728, 576), "4.0": (2048, 512),
}
BINNED_RESOLUTIONS = (256, 512, 1024)  # the trained sizes the bins exist for


def binned_size(height: int, width: int, trained: int) -> tuple[int, int]:
    """The bin (height, width) of a ``trained``-px model nearest to ``height / width``."""
    ratio = min(ASPECT_RATIO_1024_BIN, key=lambda r: abs(float(r) - height / width))
    h, w = ASPECT_RATIO_1024_BIN[ratio]
    return h * trained // 1024, w * trained // 1024


def resize_and_crop(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, C, H, W) scaled (bilinear) to cover ``height`` x ``width``, then center-cropped to it."""
    h, w = images.shape[-2:]
    if (h, w) == (height, width):
        return images
    ratio = max(height / h, width / w)
    rh, rw = int(h * ratio), int(w * ratio)
    images = F.interpolate(images, size=(rh, rw), mode="bilinear", align_corners=False)
    top, left = (rh - height) // 2, (rw - width) // 2
    return images[..., top:top + height, left:left + width]
