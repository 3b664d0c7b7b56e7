"""`python -m charnn` is the same program as the `charnn` command."""

import sys

from charnn.cli import main

sys.exit(main())
