"""Child processes for benchmarks/bench.py (run as `python _children.py ROLE ...`).

Each child is as plain as it can be, so that what it costs is the floor:
blocking `os.read`/`os.write` loops, no trio, no latis. Every child exits by
itself when its stdin reaches EOF (the zmq one also on an empty message), so
none outlives the benchmark, however it ends.

Roles:
    pipe-echo                 echo stdin to stdout until EOF (the F2 child)
    pipe-stream N SIZE        wait for one byte on stdin, then write N messages
                              of SIZE bytes to stdout, one os.write each; then
                              wait for EOF
    zmq-rep ADDRESS           connect a REP socket to ADDRESS and echo every
                              request until an empty one

`EXECNET_ECHO` and `EXECNET_STREAM` are the sources that bench.py runs in an
execnet gateway (execnet sends source text, not functions).
"""

from __future__ import annotations

import os
import sys

# Run in an execnet popen gateway: echo each message until None.
EXECNET_ECHO = """
while True:
    item = channel.receive()
    if item is None:
        break
    channel.send(item)
"""

# Run in an execnet popen gateway: for each (n, size) received, send n
# messages of size bytes, then None; stop on None.
EXECNET_STREAM = """
while True:
    job = channel.receive()
    if job is None:
        break
    n, size = job
    msg = b"x" * size
    send = channel.send
    for _ in range(n):
        send(msg)
    send(None)
"""

PIPE_SIZE = 1024 * 1024
F_SETPIPE_SZ = 1031


def _grow(fd: int) -> None:
    try:
        import fcntl

        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", F_SETPIPE_SZ), PIPE_SIZE)
    except OSError:
        pass


def pipe_echo() -> None:
    read, write = os.read, os.write
    while True:
        data = read(0, 65536)
        if not data:
            return
        while data:
            data = data[write(1, data) :]


def pipe_stream(n: int, size: int) -> None:
    _grow(1)
    msg = b"x" * size
    write = os.write
    while os.read(0, 1):
        for _ in range(n):
            write(1, msg)
    # EOF on stdin: done.


def _exit_on_eof() -> None:
    # The REP loop blocks in recv: a thread ends the process when stdin closes
    # (the benchmark ended, or died), so no child outlives it.
    import threading

    def watch() -> None:
        while os.read(0, 4096):
            pass
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


def zmq_rep(address: str) -> None:
    import zmq

    _exit_on_eof()

    ctx = zmq.Context()
    sock = ctx.socket(zmq.REP)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(address)
    recv, send = sock.recv, sock.send
    try:
        while True:
            msg = recv()
            send(msg)
            if not msg:
                return
    finally:
        sock.close()
        ctx.term()


def main(argv: list[str]) -> int:
    role = argv[0]
    if role == "pipe-echo":
        pipe_echo()
    elif role == "pipe-stream":
        pipe_stream(int(argv[1]), int(argv[2]))
    elif role == "zmq-rep":
        zmq_rep(argv[1])
    else:
        print(f"unknown role {role!r}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
