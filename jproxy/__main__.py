"""``python -m jproxy`` is the ``gjproxy`` command."""

import sys

from jproxy.cli import main

sys.exit(main())
