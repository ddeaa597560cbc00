"""Errors reported as one line instead of a traceback: :class:`LandscapeError` (exit code 1: the work failed)
and :class:`InputError` (exit code 2: bad input or environment, noticed before any work)."""


class LandscapeError(RuntimeError):
    """A stage or command cannot proceed; the message says what is wrong and what to do."""


class InputError(LandscapeError):
    """Bad input or an unusable environment (a grid, an address, a store), found before anything ran."""
