"""Making a written file or a rename durable: data reaches the disk before the write is trusted.

Checkpoints and published versions are renamed into place once complete; without these a
crash soon after the rename could leave the new name over files whose data never reached the
disk. No torch here.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_file(path: Path) -> None:
    """Flush the file's data to the disk."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    """Flush the directory's entries (a rename into it) to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
