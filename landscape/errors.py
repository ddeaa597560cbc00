"""Errors a stage reports as one line (exit code 1) instead of a traceback."""


class LandscapeError(RuntimeError):
    """A stage cannot proceed; the message says what is wrong and what to do."""
