"""The `ssh` dialer: run a unit's command on another host, talk over its stdin and stdout.

`SshDialer` logs in with asyncssh, runs the unit's command (by default
`latis-unit --stdio`) without a pty, and yields a `trio.abc.HalfCloseableStream`
over the command's stdin and stdout, bytes unchanged. This is the only package
of latis that runs asyncio: `connect()` opens a trio-asyncio loop in a task of
its own, so callers need nothing special, and each connection has its own loop
(trio-asyncio runs any number of loops in one trio run). asyncssh and
trio-asyncio are imported on the first `connect()`: they cost ~0.3 s to import
and `trio_asyncio` patches asyncio's loop lookup.

How bytes cross between trio and asyncio. An awaited call into asyncio costs
40-90 µs (an asyncio task, a future, a trio wake-up), more than the rest of a
round trip, so the data path awaits none:

- `send_all` calls the channel's `write` directly from the calling trio task.
  asyncssh's write path is synchronous (frame, encrypt, a non-blocking `send`
  on the socket) and uses the loop it keeps, not the current one. It awaits
  only when the channel's send buffer is over its high-water mark.
- Received data needs no asyncio task either. asyncssh hands each packet's
  payload to our session's `data_received`, which the trio-asyncio loop runs
  in one of trio's own tasks; it appends the bytes to a buffer and reschedules
  the trio task parked in `receive_some`. `receive_some` returns all that is
  buffered at once (one join), so a burst of packets costs one wake-up. Over
  `HIGH_WATER` buffered bytes, reading pauses and the SSH window holds the
  host back.

Host keys are verified: against known_hosts, or a pinned key (`host_key`). An
unknown host is refused unless `accept_new` (trust on first use, recorded in
known_hosts); a changed key is always refused. Password and keyboard-interactive
logins are off (nobody is there to type), and so are agent and X11 forwarding.

Nothing is left running on the host. sshd does not signal the command when the
channel or the connection closes, and ignores signal requests from root, so a
command that ignores EOF on stdin would outlive us. So the command starts
through a tiny `sh` wrapper that prints its PID on stdout (a line we take out)
and then `exec`s it: the command keeps the channel's own stdin and stdout
(nothing of ours in the data path), and because sshd makes each session's
process a session leader, that PID also names the command's process group.
Leaving the `connect()` block closes the channel (the command's stdin reaches
EOF and its stdout closes; `latis-unit` exits by itself). sshd confirms the
close only once the command has exited, which is how we see it exit. If it
has not within `grace` seconds, a second command over the same connection
sends SIGTERM to its whole process group, and SIGKILL `grace` seconds later
(to the group even if the command obeyed: its children may not have). This
cleanup is shielded from cancellation and bounded in time.

We chose this over a wrapper that relays stdin to the command (a `cat` in the
data path: a copy and a process hop on every message, to notice EOF), and
over a pty (closing it sends SIGHUP, but a process may ignore SIGHUP, and the
pty would have to be put in raw mode). If the connection itself is gone,
nothing can reach the host: the command still gets EOF on its stdin, and a
well-behaved unit exits then.

The modules, one concern each (asyncio, asyncssh and trio-asyncio are
imported in no other package of latis):

- `dialer`: `SshDialer`, its options and its `ssh://` URLs.
- `stream`: `SshStream`, the trio stream fed by asyncssh's session callbacks.
- `connection`: logging in, starting the command, and ending both, in a
  trio-asyncio loop of the connection's own.
- `hostkeys`: `_HostKeyCheck`, the decision on host keys asyncssh could not
  match (known_hosts, pins, trust on first use).
- `remote`: the shell lines run on the host (the wrapper, the kill command).
- `addresses`: how a host is written in messages and in known_hosts.
"""

from __future__ import annotations

from .connection import KILL_TIMEOUT as KILL_TIMEOUT
from .dialer import SshDialer as SshDialer
from .remote import NOT_FOUND as NOT_FOUND
from .stream import EXIT_STATUS_WAIT as EXIT_STATUS_WAIT
from .stream import HIGH_WATER as HIGH_WATER
from .stream import LOW_WATER as LOW_WATER
from .stream import PREAMBLE_LIMIT as PREAMBLE_LIMIT
from .stream import SEND_HIGH_WATER as SEND_HIGH_WATER
from .stream import STDERR_TAIL as STDERR_TAIL
from .stream import SshStream as SshStream

__all__ = ["DIALER", "SshDialer", "SshStream"]


#: This module's dialer, for the `latis.transports` registry.
DIALER = SshDialer
