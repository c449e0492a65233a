"""The one exception kgpt2 raises for a user's mistake.

The CLI prints its message as one line and exits with status 2; nothing else
(no traceback) reaches the terminal. Library callers can catch it.

    >>> from kgpt2.errors import UserError
    >>> str(UserError("config file 'x.toml' does not exist"))
    "config file 'x.toml' does not exist"
"""


class UserError(Exception):
    """Bad input from the user: a one-sentence message says what and where."""
