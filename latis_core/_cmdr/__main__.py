"""`python -m latis_core._cmdr`: run the cmdr daemon in the foreground (what
`latis daemon run` does, and what a client that starts the daemon runs)."""

import logging
import os
import sys

from latis_core._cmdr.daemon import run_daemon

status = run_daemon(os.environ.get("LATIS_CONFIG"))
# The state is closed by now, and the log is flushed below: all that is left is
# freeing the daemon's objects one by one (~0.3 s with 4,000 dial-in units
# connected, of a 3.4 s stop), which the process's end does at once.
logging.shutdown()
sys.stdout.flush()
sys.stderr.flush()
os._exit(status)
