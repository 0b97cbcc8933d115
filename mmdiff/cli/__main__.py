"""``python -m mmdiff.cli``: the ``mmdiff`` command."""
from . import main

raise SystemExit(main())
