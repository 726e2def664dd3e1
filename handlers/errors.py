"""The small error taxonomy handlers raise; the runner decides what happens next."""

from __future__ import annotations


class JobError(Exception):
    """Base of the errors a handler raises on purpose."""


class RetryableError(JobError):
    """A transient failure: try again later (after ``delay_s`` if the handler knows it)."""

    def __init__(self, message: str, *, delay_s: float | None = None) -> None:
        super().__init__(message)
        self.delay_s = delay_s


class Deferred(JobError):
    """Not a failure: the job waits for other work in progress (another run of the same
    sync, say). The same attempt runs again after ``delay_s``; no attempt is spent."""

    def __init__(self, message: str, *, delay_s: float) -> None:
        super().__init__(message)
        self.delay_s = delay_s


class PermanentError(JobError):
    """Retrying cannot help: dead-letter at once with this (human-readable) reason."""


class JobTimeout(JobError):
    """The job ran past its timeout or deadline; retried like a transient failure."""


class DeadlineExceeded(PermanentError):
    """The job's own deadline passed: retrying is pointless."""
