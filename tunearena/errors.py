"""The one error type a user's mistake becomes.

Each package raises a subclass where the mistake is first understood, with the file, field or
line and the fix in its message; the CLI catches ``UserError`` once and prints the message
without a traceback. Anything else is a bug of ours and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A bad input, config or cluster: the message says where and what to do."""
