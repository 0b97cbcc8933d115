"""Modality plugins, each the same shape: ``<name>/task.py`` (training), ``<name>/pipeline.py``
(sampling), ``<name>/model.py`` where it has a network of its own. Image and video share the
latent-diffusion base (``latent_task.py``, ``latent_pipeline.py``). Importing this package
registers every modality's pipeline."""
from . import image, text, video  # noqa: F401
