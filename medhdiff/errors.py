"""Exception types shared by the library and the CLI.

The CLI maps :class:`InputError` (and subclasses) to exit code 2 and any other
:class:`MedhdiffError` to exit code 1, printing a single ``error:`` line.
"""


class MedhdiffError(Exception):
    """Base class for errors that the CLI reports without a traceback."""

    exit_code = 1


class InputError(MedhdiffError):
    """Bad user input: a missing, corrupt or unsupported file, or bad options."""

    exit_code = 2


class UnsupportedFormatError(InputError):
    """The file extension or image layout is not something medhdiff reads."""


class OutputExistsError(InputError):
    """An output file exists and overwriting was not requested."""


class OutputWriteError(MedhdiffError):
    """An output could not be written (disk full, no permission); no partial file was left."""
