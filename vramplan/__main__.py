"""`python -m vramplan` is the `vramplan` command."""

import sys

from vramplan.cli import main

sys.exit(main())
