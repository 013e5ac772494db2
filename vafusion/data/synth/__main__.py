"""``python -m vafusion.data.synth OUT [--videos N] [--seconds S] [--seed K] [--workers W]``."""

import sys

from vafusion.data.synth.corpus import main

sys.exit(main())
