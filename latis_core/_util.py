"""Small helpers shared by the trio parts."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["unwrap_group"]


@contextmanager
def unwrap_group() -> Iterator[None]:
    """Re-raise a lone exception out of the ExceptionGroup a nursery wrapped it in.

    Our context managers run the caller's block inside a nursery of their own;
    the caller should see the `RequestError` it caused, not a group of one.
    A group of several (the block and a task of ours failed) stays a group.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1 and not isinstance(group.exceptions[0], BaseExceptionGroup):
            exc = group.exceptions[0]
            raise exc from exc.__cause__
        raise
