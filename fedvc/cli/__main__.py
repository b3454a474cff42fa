"""``python -m fedvc.cli``."""

import sys

from fedvc.cli import main

sys.exit(main())
