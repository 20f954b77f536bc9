"""Error types that map to the command's exit status.

Every failure a user can cause ends in one of these, carrying one line that names the
culprit (file, key, column, partition). The CLI prints ``str(error)`` and exits with
``error.exit_code``; a traceback is shown only with ``--debug``.
"""


def first_line(e: BaseException, with_type: bool = True) -> str:
    """An exception as one line: its first line of text, led by its type name."""
    text = str(e).strip()
    if not text:
        return type(e).__name__
    return f"{type(e).__name__}: {text.splitlines()[0]}" if with_type else text.splitlines()[0]


class GdDaskError(Exception):
    """Base class: a failure with a one-line message for the user (exit status 1)."""

    exit_code = 1


class ConfigError(GdDaskError):
    """Bad usage or bad run configuration (exit status 2)."""

    exit_code = 2


class DataError(GdDaskError):
    """The data cannot be read or is unfit for training (exit status 1)."""


class TrainingError(GdDaskError):
    """Training failed, e.g. the loss diverged (exit status 1)."""


class ClusterError(GdDaskError):
    """The dask cluster could not be reached or started (exit status 1)."""


class ArtifactError(GdDaskError):
    """A model artifact is unreadable, of another format, or cannot be written."""


class PredictionOverflow(DataError):
    """A model's predictions are not finite on finite features (exit status 1)."""
