"""`python -m clipdoctor ...` = the `clipdoctor` command (also what torchrun launches)."""

import sys

from clipdoctor.cli import main

sys.exit(main())
