"""``python -m router.agent ...``: the same as ``router node-agent ...``."""

import sys

from router.agent.cli import main

sys.exit(main())
