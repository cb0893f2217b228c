"""User-facing errors.

The library raises `CompressError` for anything a user can fix (bad path, bad option,
too little data). The CLI turns it into one line on stderr and a non-zero exit; any
other exception is a bug and is reported as such.
"""


class CompressError(Exception):
    """A problem with the user's input or environment, stated in one line."""

    exit_code = 2
