"""Retune's one exception hierarchy.

Every error Retune raises on purpose is a :class:`RetuneError`. Each subclass carries a
stable ``code`` (used by the CLI, the HTTP API and the JSON bodies ``{"error": code,
"message": ...}``) and also inherits the builtin exception it specializes, so callers that
catch ``KeyError`` or ``ValueError`` keep working.

Infrastructure errors (SQLAlchemy, the filesystem, fsspec) are translated into these once,
at the boundary where they happen, with ``raise ... from e``; messages say what to do next.
"""

from __future__ import annotations

import re

__all__ = [
    "CheckpointCorrupt",
    "CheckpointNotFound",
    "CommandRejected",
    "InvalidArgument",
    "MissingExtra",
    "NodeNotFound",
    "RetuneError",
    "RunNotFound",
    "RunInUse",
    "RunNotLive",
    "SchemaMismatch",
    "StoreError",
    "StoreNotFound",
    "StoreUnavailable",
    "CommandTimeout",
    "DistributedError",
    "JobTimeout",
    "StopTraining",
    "redact",
]

# ``scheme://user:SECRET@host``: the secret runs to the last ``@`` before the host's ``/``.
_URL_SECRET = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@'\"]*:)[^\s/'\"]*(?=@)")
# ``password=SECRET`` in a URL query or a libpq keyword string.
_KEY_SECRET = re.compile(r"(?P<head>\b(?:password|passwd|pwd)\s*=\s*)[^\s&;'\"]+", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with every password of a URL or connection string replaced by ``***``.

    The one redaction helper: store URLs appear in error messages, CLI output, HTTP bodies
    and logs, and none of them may show a PostgreSQL password. ``RetuneError`` applies it to
    every message, so any ``str(error)`` is safe to print; use it directly on anything else
    that may hold a store URL (``redact(store.url)``).

    >>> redact("postgresql+psycopg://mia:s3cret@db:5432/retune")
    'postgresql+psycopg://mia:***@db:5432/retune'
    """
    text = _URL_SECRET.sub(r"\g<head>***", text)
    return _KEY_SECRET.sub(r"\g<head>***", text)


class RetuneError(Exception):
    """Base of every error Retune raises on purpose. ``code`` is stable and machine-readable."""

    code: str = "retune_error"
    http_status: int = 500

    def __init__(self, message: str) -> None:
        message = redact(message)  # a store URL in a message never shows its password
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message

    def to_dict(self) -> dict[str, str]:
        """The JSON body the HTTP API returns for this error."""
        return {"error": self.code, "message": self.message}


class InvalidArgument(RetuneError, ValueError):
    """A value given by the user is malformed: wrong type, non-finite, out of bounds, unknown."""

    code = "invalid_argument"
    http_status = 400


class MissingExtra(RetuneError, ImportError):
    """An optional feature needs a package that is not installed; the message names the
    extra to install (``pip install 'retune[mlflow]'``)."""

    code = "missing_extra"
    http_status = 501


class RunNotFound(RetuneError, KeyError):
    """No run has the given name or id."""

    code = "run_not_found"
    http_status = 404


class NodeNotFound(RetuneError, KeyError):
    """No node of the run has the given id."""

    code = "node_not_found"
    http_status = 404


class CheckpointNotFound(RetuneError, KeyError):
    """No checkpoint matches the given id, node or ``node@step``."""

    code = "checkpoint_not_found"
    http_status = 404


class CheckpointCorrupt(RetuneError, OSError):
    """A checkpoint's blob is missing or its bytes do not match their hash."""

    code = "checkpoint_corrupt"
    http_status = 500


class RunNotLive(RetuneError, RuntimeError):
    """A command was sent to a run that has finished, crashed or stopped."""

    code = "run_not_live"
    http_status = 409


class RunInUse(RetuneError, RuntimeError):
    """Another live process is attached to the run (its heartbeat is fresh): it cannot be
    resumed twice at once. The message names that process's host and pid."""

    code = "run_in_use"
    http_status = 409


class CommandRejected(RetuneError, RuntimeError):
    """A command was rejected, at submission or when the training process applied it."""

    code = "command_rejected"
    http_status = 422

    def __init__(self, message: str, command_id: int | None = None) -> None:
        super().__init__(message)
        self.command_id = command_id


class StoreError(RetuneError, RuntimeError):
    """The store failed in a way the user cannot fix by changing their input."""

    code = "store_error"
    http_status = 500


class StoreUnavailable(StoreError):
    """The store URL is malformed, or the database cannot be opened or read."""

    code = "store_unavailable"
    http_status = 503


class StoreNotFound(StoreUnavailable, FileNotFoundError):
    """No store exists at the URL, and the caller asked not to create one (reading commands
    never create a store: a mistyped ``--store`` must not leave an empty database behind)."""

    code = "store_not_found"
    http_status = 404


class SchemaMismatch(StoreError):
    """The database schema is older or newer than this version of Retune expects."""

    code = "schema_mismatch"
    http_status = 503


class CommandTimeout(RetuneError, TimeoutError):
    """A command is still pending after the time a caller was willing to wait."""

    code = "command_timeout"
    http_status = 504


class DistributedError(RetuneError, RuntimeError):
    """The ranks of a ``torch.distributed`` job could not agree: another rank died, hung past
    the process group's ``timeout=``, failed to start the run, or could not apply a change
    that rank 0 applied (the ranks would have diverged). Every rank that sees it stops."""

    code = "distributed_error"
    http_status = 500


class JobTimeout(RetuneError, TimeoutError):
    """A notebook job did not reach what a caller waited for (a step, its end) in time."""

    code = "job_timeout"
    http_status = 504


class StopTraining(BaseException):
    """Raised by ``run.step()`` after a ``stop`` command: training ends at this step boundary.

    Not a ``RetuneError`` and not an ``Exception``: a user's ``except Exception`` must not
    swallow it. ``with retune.init(...) as run:`` catches it and marks the run ``stopped``;
    ``run.epochs()`` / ``run.batches()`` end their loops instead of raising.
    """
