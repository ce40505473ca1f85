"""The one exception type that reaches a user as a message instead of a traceback."""


class KdpipeError(Exception):
    """A problem the user can fix: the message says what went wrong and how to fix it.

    The CLI prints the message and exits non-zero; library callers catch it like any exception.
    """
