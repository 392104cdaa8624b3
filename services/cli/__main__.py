"""`python -m services.cli` is the `mesh` command."""

import sys

from services.cli.main import main

sys.exit(main())
