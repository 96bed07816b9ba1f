"""The names of the units a config defines, cheaply (`config_unit_names`).

For `latis status`, which marks the units the config no longer has: the names
are remembered in a cache file and the config is read (and its reading
imported) only when the file changed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from latis_core._cmdr.config_file import ConfigError, find_config

__all__ = ["config_unit_names"]


def config_unit_names(
    explicit: str | os.PathLike[str] | None = None, cache: Path | None = None
) -> set[str]:
    """The names of the units the config defines, cheaply: remembered in `cache`
    (a JSON file) with the config file's size and modification time, and read
    again only when those change (a 10,000-unit config takes ~0.5 s to read).

    Raises:
        ConfigError: the config had to be read and could not be.
    """
    path = find_config(explicit)
    if path is None:
        return {"local"}  # (default_config's, without loading its plugins)
    try:
        info = path.stat()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    key = [str(path), info.st_size, info.st_mtime_ns]
    if cache is not None:
        try:
            kept = json.loads(cache.read_text(encoding="utf-8"))
            if kept.get("config") == key:
                return set(kept["units"])
        except (OSError, ValueError, KeyError, AttributeError):
            pass  # none yet, or not ours: read the config
    from latis_core._cmdr.config import _read, parse_config

    names = set(parse_config(_read(path), path).units)
    if cache is not None:
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            scratch = cache.with_name(f".{cache.name}.{os.getpid()}")
            scratch.write_text(json.dumps({"config": key, "units": sorted(names)}),
                               encoding="utf-8")
            scratch.replace(cache)
        except OSError:
            pass  # a cache that cannot be written only costs the next reader time
    return names
