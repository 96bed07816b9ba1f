"""`python -m latis_core._cmdr`: run the cmdr daemon in the foreground (what
`latis daemon run` does, and what a client that starts the daemon runs)."""

import os
import sys

from latis_core._cmdr.daemon import run_daemon

sys.exit(run_daemon(os.environ.get("LATIS_CONFIG")))
