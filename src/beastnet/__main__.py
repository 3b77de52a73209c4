"""`python -m beastnet ...` runs the `beastnet` command."""
import sys

from beastnet.cli import main

sys.exit(main())
