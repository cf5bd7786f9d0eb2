"""Errors that the user can fix: the entry point prints their message, not a traceback."""


class UserError(Exception):
    """Base for errors caused by input or configuration; the message says what was wrong and the fix."""


class InvalidConfigError(UserError, ValueError):
    """A config value is out of range or inconsistent (e.g. a layer size <= 0, a threshold outside [0, 1])."""


class InvalidInputError(UserError, ValueError):
    """Input data cannot be used as given (an undecodable image, an empty dataset, a NaN in a batch)."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the run needs does not exist; the message names it and what writes it."""


class CheckpointMismatchError(UserError, ValueError):
    """A checkpoint or saved model was made with another configuration (architecture, codebook) than the one
    that loads it; the message names the file, what differs, and how to get a matching one."""
