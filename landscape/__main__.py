"""``python -m landscape …`` is the ``landscape`` console command."""

import sys

from landscape.cli import main

sys.exit(main())
