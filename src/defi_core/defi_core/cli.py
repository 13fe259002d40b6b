"""How the DeFI command-line tools end: one line and an exit code, never a raw traceback for bad
input, a file-system error or Ctrl-C."""
from __future__ import annotations

import signal
import sys
from typing import Callable, Optional

__all__ = ['EXIT_BAD_INPUT', 'EXIT_INTERRUPTED', 'EXIT_TERMINATED', 'run_cli', 'describe_os_error']

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130          # 128 + SIGINT, as a shell reports Ctrl-C
EXIT_TERMINATED = 143           # 128 + SIGTERM


def describe_os_error(exc: OSError, writing: Optional[str] = None) -> str:
    """'<what went wrong>: <path>' from an OSError; `writing` names the output when the error
    carries no path (numpy's '737280 requested and 130944 written' on a full disk)."""
    what = exc.strerror or str(exc) or type(exc).__name__
    paths = [str(p) for p in (exc.filename, exc.filename2) if p]
    if paths:
        return f"{what}: {' -> '.join(paths)}"
    # a FileNotFoundError without a path is our own 'X not found' about an input, not the output
    return f'{what} (writing {writing})' if writing and not isinstance(exc, FileNotFoundError) else what


def _terminate(signum, frame):
    # SIGTERM unwinds like Ctrl-C, so the body's cleanup (temporary folders) runs
    raise SystemExit(EXIT_TERMINATED)


def run_cli(prog: str, body: Callable[[], int], writing: Optional[str] = None) -> int:
    """Run a command's body; bad input (ValueError, a missing or existing file) and file-system
    errors print one line '<prog>: error: ...' and give 2, Ctrl-C gives 130 and SIGTERM 143 after
    the body cleaned up (its finally / except BaseException blocks run)."""
    previous = signal.getsignal(signal.SIGTERM)
    try:
        signal.signal(signal.SIGTERM, _terminate)
    except ValueError:           # not the main thread: leave signals alone
        previous = None
    try:
        return int(body() or 0)
    except KeyboardInterrupt:
        print(f'{prog}: interrupted', file=sys.stderr)
        return EXIT_INTERRUPTED
    except SystemExit as exc:
        if exc.code == EXIT_TERMINATED:
            print(f'{prog}: terminated', file=sys.stderr)
        raise
    except OSError as exc:       # FileNotFoundError, PermissionError, a full disk, ...
        print(f'{prog}: error: {describe_os_error(exc, writing)}', file=sys.stderr)
        return EXIT_BAD_INPUT
    except ValueError as exc:
        print(f'{prog}: error: {exc}', file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
