"""``python -m fedvc_client``."""

import sys

from fedvc_client.cli import main

sys.exit(main())
