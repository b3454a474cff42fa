"""``python -m fedvc_server``."""

import sys

from fedvc_server.cli import main

sys.exit(main())
