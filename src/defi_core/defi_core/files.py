"""Directories written so that a reader sees the old one or the new one, never a half-written one."""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

__all__ = ['temp_directory_for', 'replace_directory', 'pid_alive', 'remove_stale_temporaries']

# '.<name>.tmp-PID', '.<name>.old-PID', '.tmp-<name>-PID': a writer's temporaries, tagged with its PID
_TEMPORARY = re.compile(r'^\.(?:.*\.)?(?:tmp|old)-(?:.*-)?(\d+)$')


def pid_alive(pid: int) -> bool:
    """Whether a process `pid` exists on this machine (one of another user counts)."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OverflowError, ValueError):
        return False
    return True


def remove_stale_temporaries(parent, prefix: str = '.', include_own: bool = False) -> list:
    """Remove the temporaries in `parent` whose name starts with `prefix` and whose writer's PID is
    gone (SIGKILL, power loss, a full disk): a killed run cannot clean up after itself, so the next
    one does. Those of a live process (perhaps writing now) stay; ours only with include_own."""
    parent = Path(parent)
    removed: list[Path] = []
    if not parent.is_dir():
        return removed
    for path in parent.glob(f'{prefix}*'):
        m = _TEMPORARY.match(path.name)
        if m is None or not path.is_dir():
            continue
        pid = int(m.group(1))
        if (pid == os.getpid() and include_own) or (pid != os.getpid() and not pid_alive(pid)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def temp_directory_for(dest, overwrite: bool = False) -> Path:
    """A new empty directory beside `dest` to write into, then `replace_directory(tmp, dest)`;
    FileExistsError when `dest` exists and `overwrite` is false."""
    dest = Path(dest)
    if dest.exists() and not overwrite:
        raise FileExistsError(f'{dest} exists; pass overwrite=True (--overwrite) to replace it')
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(dest.parent, f'.{dest.name}.', include_own=True)
    tmp = dest.parent / f'.{dest.name}.tmp-{os.getpid()}'
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
