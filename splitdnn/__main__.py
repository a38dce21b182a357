"""`python -m splitdnn`: the command line."""

import sys

from splitdnn.cli import main

sys.exit(main())
