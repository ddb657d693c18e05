"""``python -m rvc_mlx``: the ``rvc-mlx`` command."""

import sys

from .command import main

sys.exit(main())
