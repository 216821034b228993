"""`python -m xbench_core ...` (what torchrun launches) is the `xbench` command."""

import sys

from .cli import main

sys.exit(main())
