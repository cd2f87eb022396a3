"""`python -m vqrae.cli ...` is the `vqrae` command."""

import sys

from . import main

sys.exit(main())
