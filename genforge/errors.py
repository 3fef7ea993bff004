"""User-facing errors.

Every problem a user can cause (a bad file, a bad config value, a broken model
file) raises a subclass of :class:`GenforgeError` whose message names the file,
field or value. The CLI prints it on one line and exits non-zero; a traceback
is shown only with ``--debug``.
"""


class GenforgeError(Exception):
    """A problem with the user's input, reported as one clear line."""


class ConfigError(GenforgeError):
    """A config file or ``--set`` override is invalid."""


class DataError(GenforgeError):
    """A data source is missing, malformed, hostile or empty after cleaning."""


class ModelFileError(GenforgeError):
    """A model or checkpoint file is missing, truncated, altered or unsafe."""


class TrainingError(GenforgeError):
    """Training cannot continue (for example a non-finite loss)."""
