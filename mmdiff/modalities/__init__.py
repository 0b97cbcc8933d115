"""Modality plugins; importing this package registers every modality's pipeline."""
from . import image  # noqa: F401
from . import text  # noqa: F401
from . import video  # noqa: F401
