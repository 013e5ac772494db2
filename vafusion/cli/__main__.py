"""``python -m vafusion.cli``."""

import sys

from vafusion.cli import main

sys.exit(main())
