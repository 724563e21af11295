"""The project's error type for mistakes the user can fix, kept apart from bugs.

`python -m pipeline` turns a UserError into one `error: ...` line and exit status 2, with no traceback:
the message is the whole story (what was wrong, where, and how to fix it). Any other exception is a bug
(ours or a library's) and keeps its traceback, so it never hides behind a tidy one-line message.
"""
from __future__ import annotations


class UserError(ValueError):
    """Bad input the user can fix: a missing or malformed file, a bad option, an unusable data set.

    Raise it only when the message names the file, value or option, says what was expected and how to fix
    it. Do not raise it for states that only a bug can produce (a wrong array shape between two of our own
    functions): those stay ValueError/TypeError/AssertionError and keep their traceback.
    It subclasses ValueError so `except ValueError` and `pytest.raises(ValueError)` still catch it.
    """
