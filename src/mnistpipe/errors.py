"""Errors a user can cause, and the one place that turns them into a clean exit."""

from __future__ import annotations

import functools
import sys


class UserError(Exception):
    """Something the user can fix (params, data, files). Printed without a traceback."""


def exit_on_user_error(main):
    """Wrap an entry point: a UserError prints `error: ...` to stderr and exits 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)

    return wrapper
