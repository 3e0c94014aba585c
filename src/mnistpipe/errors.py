"""Errors a user can cause, and the one place that turns them into a clean exit.

Every entry point (each stage's main, the `mnistpipe` command) is wrapped by
`exit_on_user_error`. It ends these without a traceback, by exit code:

- 2: a UserError (bad params, missing data, a wrong file): the message says the fix.
- 3: the environment refused: an OSError (disk full, permission denied, read-only
  filesystem, a missing file), a file that is not valid text, memory exhausted. The
  message names the file where one is known.
- 130: interrupted (Ctrl-C); 141: the reader of our output went away (`| head`).

Anything else (AssertionError, TypeError, ...) is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Iterator

ENVIRONMENT_EXIT = 3


class UserError(Exception):
    """Something the user can fix (params, data, files). Printed without a traceback."""


def _name(filename) -> str:
    return os.fsdecode(filename) if isinstance(filename, (str, bytes, os.PathLike)) else str(filename)


@contextlib.contextmanager
def naming(path: str | os.PathLike) -> Iterator[None]:
    """Name `path` in an OSError or UnicodeError raised inside that names no file (a failed
    write() or decode() does not know which file it was for)."""
    try:
        yield
    except (OSError, UnicodeError) as exc:
        if getattr(exc, "filename", None) is None:
            exc.filename = _name(path)
        raise


def environment_message(exc: BaseException) -> str | None:
    """One line for an error the environment caused, or None for anything else (a bug)."""
    if isinstance(exc, OSError):
        text = exc.strerror or str(exc) or type(exc).__name__
        if exc.filename is not None:
            text += f": {_name(exc.filename)}"
        if exc.filename2 is not None:
            text += f" -> {_name(exc.filename2)}"
        return text
    if isinstance(exc, UnicodeError):
        where = getattr(exc, "filename", None)
        return f"{_name(where)}: not valid text ({exc})" if where is not None else f"not valid text ({exc})"
    torch = sys.modules.get("torch")  # never imported here: the CLI's --help stays fast
    if isinstance(exc, (MemoryError, getattr(torch, "OutOfMemoryError", MemoryError))):
        return f"out of memory{f' ({exc})' if str(exc) else ''}; use a smaller batch_size or free memory"
    return None


def _say(line: str) -> None:
    """Print to stderr, escaping what its encoding cannot show (odd file names)."""
    encoding = getattr(sys.stderr, "encoding", None) or "utf-8"
    print(line.encode(encoding, "backslashreplace").decode(encoding), file=sys.stderr)


def _quiet_stdout() -> None:
    """The reader is gone: point stdout at /dev/null so the interpreter's final flush is silent."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def exit_on_user_error(main):
    """Wrap an entry point: UserError and environment errors print `error: ...` to stderr and
    exit non-zero (see the module's docstring); bugs propagate with their traceback."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as exc:
            _say(f"error: {exc}")
            sys.exit(2)
        except KeyboardInterrupt:
            _say("interrupted")
            sys.exit(130)
        except BrokenPipeError:
            _quiet_stdout()
            sys.exit(141)
        except Exception as exc:
            message = environment_message(exc)
            if message is None:
                raise
            _say("error: " + " ".join(message.splitlines()))  # one line, whatever the file's name
            sys.exit(ENVIRONMENT_EXIT)

    return wrapper
