"""Errors the CLI turns into one line of explanation (with the fix) instead of a traceback."""


class CliError(Exception):
    """A user-facing error: the message says what was wrong and how to fix it."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code
