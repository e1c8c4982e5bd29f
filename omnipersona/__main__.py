"""`python -m omnipersona ...` runs the command line (see `omnipersona.cli`)."""

import sys

from omnipersona.cli import main

sys.exit(main())
