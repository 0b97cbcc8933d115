"""Modality plugins; importing this package registers every modality's pipeline."""
from . import image  # noqa: F401
