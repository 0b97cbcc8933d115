"""mmdiff: diffusion models for images, video and text on one core."""
__version__ = "0.1.0"
