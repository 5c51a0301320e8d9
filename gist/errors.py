"""The one base of every error gist raises for its users: :class:`GistError`.

Each module defines the errors of its own concern under it (a dataset that
is not on disk, a width that does not split, a worker that died, a run that
diverged, a sweep config that cannot run), so a caller catches ``GistError``
once. Errors that are also a standard kind say so by a second base
(:class:`ConfigError` is a ``ValueError``; ``gist.data.DatasetNotFoundError``
a ``FileNotFoundError``), so code that catches those keeps working.
"""

from __future__ import annotations

__all__ = ["ConfigError", "GistError", "MissingFileError"]


class GistError(Exception):
    """Something a user of gist can act on: a bad setting, missing data, a failed
    worker, a diverged run. The message says what happened and what to do."""

    exit_status: int = 2
    """The ``gist`` command's exit status for it (2: it could not run; 1: it ran and failed)."""


class ConfigError(GistError, ValueError):
    """A setting, an argument or an input file that gist cannot run with; the
    message names the setting (or flag) and the allowed values."""


class MissingFileError(GistError, FileNotFoundError):
    """A file a command needs is not where it should be (a dataset, a part
    file, a run log); the message names the path and how to make it."""
