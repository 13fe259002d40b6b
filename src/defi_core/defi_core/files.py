"""Directories written so that a reader sees the old one or the new one, never a half-written one."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

__all__ = ['temp_directory_for', 'replace_directory']


def temp_directory_for(dest, overwrite: bool = False) -> Path:
    """A new empty directory beside `dest` to write into, then `replace_directory(tmp, dest)`;
    FileExistsError when `dest` exists and `overwrite` is false."""
    dest = Path(dest)
    if dest.exists() and not overwrite:
        raise FileExistsError(f'{dest} exists; pass overwrite=True (--overwrite) to replace it')
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f'.{dest.name}.tmp-{os.getpid()}'
    shutil.rmtree(tmp, ignore_errors=True)      # left over from a crashed run of this pid
    tmp.mkdir()
    return tmp


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
