"""Errors that the user can fix: the entry point prints their message, not a traceback."""


class UserError(Exception):
    """Base for errors caused by input or configuration; the message says what was wrong and the fix."""
