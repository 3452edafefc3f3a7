"""``python -m sadakit.adasde ...``: see ``sadakit.adasde.cli``."""

import sys

from .cli import main

sys.exit(main())
