"""Files appended to for a long time: the JSONL sink, the dead-letter queue, the audit log."""

from __future__ import annotations

import os

__all__ = ["path_replaced"]


def path_replaced(path: str | os.PathLike[str], fd: int) -> bool:
    """True when ``path`` no longer names the file open as ``fd``.

    logrotate (and an operator's ``mv``) moves the file away, or deletes
    it: a writer that kept its descriptor would write on into the moved
    file, or into one nobody can read. Each writer checks before it
    writes, and opens ``path`` afresh when this says so.
    """
    try:
        current = os.stat(path)
    except FileNotFoundError:
        return True
    mine = os.fstat(fd)
    return (current.st_dev, current.st_ino) != (mine.st_dev, mine.st_ino)
