"""The one exception type meaning "the user's input is wrong" (the CLI maps it to exit code 2)."""

from __future__ import annotations


class UserError(Exception):
    """Bad input: a missing file, an unknown rule set, a malformed option, an untraceable model.

    The message is one line that says what is wrong and what to do, so the CLI can print it as is.
    """
