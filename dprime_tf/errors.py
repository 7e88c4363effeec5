"""User-facing errors: command lines print these as one line and exit non-zero."""


class UserError(Exception):
    """Bad input a user can fix (flag, file, dataset). The message says how."""
