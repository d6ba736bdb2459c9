"""`python -m patternc ...`: the command line (see `patternc.cli`)."""
import sys

from .cli import main

sys.exit(main())
