"""``python -m sessionstore`` runs the command line."""

import sys

from sessionstore.cli.main import main

sys.exit(main())
