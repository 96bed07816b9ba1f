"""In-process stream pairs, for tests and for units served in the same process
(the pair lives in latis_core; this name stays for plugins and tests that use it)."""

from latis_core._io.pair import socket_stream_pair as socket_stream_pair

__all__ = ["socket_stream_pair"]
