"""``python -m tests.chaos``: see :mod:`tests.chaos.runner`."""

import sys

from .runner import main

sys.exit(main())
