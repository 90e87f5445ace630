"""``python -m jepsen_lite``: delegates to :func:`jepsen_lite.cli.main`; owns nothing else."""

import sys

from .cli import main

sys.exit(main())
