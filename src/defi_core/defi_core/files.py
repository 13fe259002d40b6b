"""Directories written so that a reader sees the old one or the new one, never a half-written one."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

__all__ = ['replace_directory']


def replace_directory(tmp, dest) -> None:
    """Move the finished directory `tmp` to `dest` (same filesystem), replacing an existing `dest`:
    os.replace cannot move a directory over a non-empty one, so the old one is renamed aside first
    and removed afterwards."""
    tmp, dest = Path(tmp), Path(dest)
    if dest.exists():
        old = dest.parent / f'.{dest.name}.old-{os.getpid()}'
        os.replace(dest, old)
        os.replace(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, dest)
