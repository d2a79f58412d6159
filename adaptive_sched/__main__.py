"""``python -m adaptive_sched`` is the ``adaptive-sched`` command."""

import sys

from .cli import main

sys.exit(main())
