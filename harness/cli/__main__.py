"""`python -m harness.cli`: the coredump command without the installed script."""

import sys

from . import main

sys.exit(main())
