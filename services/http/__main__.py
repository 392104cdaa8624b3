"""`python -m services.http` is `mesh http`."""

import sys

from services.cli import main

sys.exit(main(["http", *sys.argv[1:]]))
