"""Hypothesis settings for the fuzz tests: bounded by default, so CI stays quick.

The "latis" profile runs 200 examples per test, derandomized so a CI run is
repeatable. Set LATIS_FUZZ_EXAMPLES to run more (say 20000, for a long local
run); a run above the default draws fresh random examples each time.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings

# ConnectionPair lives in tests/helpers.py.
sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))

DEFAULT_EXAMPLES = 200
EXAMPLES = int(os.environ.get("LATIS_FUZZ_EXAMPLES", DEFAULT_EXAMPLES))

_bounded: dict[str, Any] = (
    {"derandomize": True, "database": None} if EXAMPLES <= DEFAULT_EXAMPLES else {}
)
settings.register_profile(
    "latis",
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    **_bounded,
)
settings.load_profile("latis")
