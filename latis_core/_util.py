"""Small helpers shared by the trio parts."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["leaves", "unwrap_group"]


def leaves(exc: BaseException, *, causes: bool = False) -> Iterator[BaseException]:
    """The exceptions at the bottom of `exc`, in order: a group's, however deep
    (nurseries wrap); with `causes`, what each was raised from too (trio's
    "all attempts to connect" error is raised from a group of one per address)."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from leaves(inner, causes=causes)
    elif causes and exc.__cause__ is not None:
        yield from leaves(exc.__cause__, causes=True)
    else:
        yield exc


@contextmanager
def unwrap_group() -> Iterator[None]:
    """Re-raise a lone exception out of the ExceptionGroup a nursery wrapped it in.

    Our context managers run the caller's block inside a nursery of their own;
    the caller should see the `RequestError` it caused, not a group of one.
    A group of several (the block and a task of ours failed) stays a group,
    unless one is a KeyboardInterrupt or SystemExit: that one is raised (what
    came of it, the connection's end, is its consequence).
    """
    try:
        yield
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1 and not isinstance(group.exceptions[0], BaseExceptionGroup):
            exc = group.exceptions[0]
            raise exc from exc.__cause__
        stop = group.subgroup((KeyboardInterrupt, SystemExit))
        if stop is not None:
            first = next(leaves(stop))
            raise first from first.__cause__
        raise
