"""User errors: one line on stderr and exit code 2 for every command-line entry point.

A user error is bad input that the message fully explains: a flag, a config value, a missing or
damaged file, a full disk. Its exception class derives from UserError (ConfigError,
CheckpointError, DataError, NonFiniteLossError), or it is an OSError that only the environment
can fix (no space, no permission, read-only file system). `cli` prints it as `Error: <message>`
and returns EXIT_USER_ERROR; any other exception is a bug and keeps its full traceback. With
DREAMER4_DEBUG=1 in the environment the traceback of a user error is printed too.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import re
import sys
import traceback
from collections.abc import Callable
from typing import NoReturn

EXIT_USER_ERROR = 2
# A run stopped by SIGTERM after saving its checkpoint: 128 + SIGTERM, the code a shell gives a
# process the signal ended, so schedulers and `set -e` scripts see that it did not finish.
EXIT_PREEMPTED = 143
DEBUG_ENV = 'DREAMER4_DEBUG'

# OSErrors that the user, not the code, has to fix.
_ENVIRONMENT_ERRNOS = {
    errno.ENOSPC: 'the disk is full: free space or pick a folder on another disk',
    errno.EDQUOT: 'the disk quota is exhausted: free space or pick a folder on another disk',
    errno.EACCES: 'no permission to write there: pick a folder you can write to',
    errno.EPERM: 'no permission to write there: pick a folder you can write to',
    errno.EROFS: 'the file system is read-only: pick a writable folder',
}

# TensorStore (orbax's array writer) reports a failed write as ValueError text, not OSError.
_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)")
_TENSORSTORE_FILE = re.compile(r'(?:local file|Failed writing:) "([^"]+)"')


class UserError(Exception):
    """Bad input that the message explains (names the flag, field or file, and the fix)."""


class Interrupted(UserError):
    """A run that stopped before its last step (SIGTERM: its checkpoint is saved). Drivers that
    chain runs raise it so that no later run starts on an unfinished one."""


def one_line(text: str) -> str:
    """Collapses a message onto one line (lists inside it are joined with '; ' by callers)."""
    return ' '.join(part.strip() for part in str(text).splitlines() if part.strip())


def _chain(exc: BaseException):
    """exc, then the exceptions it was raised from or while handling, depth first."""
    seen = set()
    stack = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        stack += [e.__context__, e.__cause__]


def user_message(exc: BaseException) -> str | None:
    """The one-line message if `exc` (or an exception in its chain) is a user error, else None.

    Wrappers such as orbax's background save threads re-raise a failed write as another type,
    so the chain is searched for the original OSError.
    """
    for e in _chain(exc):
        if isinstance(e, UserError):
            return one_line(str(e))
    for e in _chain(exc):
        code, where, detail = None, '', ''
        if isinstance(e, OSError) and e.errno in _ENVIRONMENT_ERRNOS:
            code, where, detail = e.errno, e.filename or '', e.strerror
        elif match := _OS_ERROR_CODE.search(str(e)):
            code = int(match.group(1))
            found = _TENSORSTORE_FILE.search(str(e))
            where = found.group(1) if found else ''
        if code in _ENVIRONMENT_ERRNOS:
            target = f' writing {where}' if where else ''
            detail = detail or os.strerror(code)
            return one_line(f'{detail}{target} ({_ENVIRONMENT_ERRNOS[code]}).')
    return None


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV, '') not in ('', '0', 'false', 'False')


class _DropBackgroundTracebacks(logging.Filter):
    """Drops the tracebacks orbax's background save threads log at ERROR: the same error is
    re-raised in the main thread, where `cli` reports it in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        from_orbax = f'{os.sep}orbax{os.sep}' in (record.pathname or '')
        return not (from_orbax and record.levelno >= logging.ERROR)


def _from_orbax(obj) -> bool:
    code = getattr(obj, 'cr_code', None)  # a coroutine
    return f'{os.sep}orbax{os.sep}' in getattr(code, 'co_filename', '')


def _quiet_unraisable(previous):
    """A failed orbax restore leaves array reads in flight; when they end after the event loop
    closed, Python prints them as 'Exception ignored' tracebacks. The restore error itself is
    reported; these echoes are dropped."""

    def hook(unraisable) -> None:
        exc = unraisable.exc_value
        loop_closed = isinstance(exc, RuntimeError) and 'Event loop is closed' in str(exc)
        if loop_closed or _from_orbax(unraisable.object):
            return
        previous(unraisable)

    hook.quiet = True
    return hook


def quiet_background_tracebacks() -> None:
    """Drops the background echoes of an error that `cli` reports in one line: orbax's thread
    logs and its unraisable coroutine errors. Not with DREAMER4_DEBUG=1; idempotent."""
    if debug_enabled():
        return
    logger = logging.getLogger('absl')
    if not any(isinstance(f, _DropBackgroundTracebacks) for f in logger.filters):
        logger.addFilter(_DropBackgroundTracebacks())
    if not getattr(sys.unraisablehook, 'quiet', False):
        sys.unraisablehook = _quiet_unraisable(sys.unraisablehook)


def report(message: str) -> int:
    """Prints `Error: message` (one line) on stderr; returns EXIT_USER_ERROR."""
    print(f'Error: {one_line(message)}', file=sys.stderr, flush=True)
    return EXIT_USER_ERROR


def cli(main: Callable[[], int | None]) -> int:
    """Runs an entry point's body; user errors become one line and EXIT_USER_ERROR.

    SystemExit passes through (argparse --help, absl's own exit); any other exception that is
    not a user error propagates with its traceback (a bug to report).
    """
    quiet_background_tracebacks()
    try:
        return int(main() or 0)
    except Exception as e:  # noqa: BLE001 - sorted into user errors and bugs just below
        message = user_message(e)
        if message is None:
            raise
        if debug_enabled():
            traceback.print_exc()
        return report(message)


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are user errors (one line, exit 2) instead of usage text."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f'{message} (see {self.prog} --help)')
