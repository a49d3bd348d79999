"""The failures a user is shown: each carries its HTTP status and the words of the error page."""
from __future__ import annotations


class PortalError(Exception):
    """A failure the user is shown on the error page, with its HTTP status."""

    status = 400
    title = "Request not accepted"

    def __init__(self, message: str, *, hint: str | None = None, status: int | None = None, title: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        if status is not None:
            self.status = status
        if title is not None:
            self.title = title


class InvalidInput(PortalError):
    status = 400
    title = "Check what you entered"


class NotAllowed(PortalError):
    status = 403
    title = "Not allowed"


class SignInFailed(PortalError):
    status = 401
    title = "Sign-in failed"


class Throttled(PortalError):
    """Too many failed password checks for one account from one client; retry_after in seconds."""

    status = 429
    title = "Too many attempts"

    def __init__(self, retry_after: int):
        super().__init__("Too many sign-in attempts came from here for this account. Wait a minute, then try again.")
        self.retry_after = retry_after


class StoredDataUnreadable(PortalError):
    status = 500
    title = "Stored data cannot be read"


class FlowFinished(InvalidInput):
    """A callback for a sign-in that is not pending here: used already, or started in another browser."""


def refused(reason: str, message: str, *, title: str | None = None, status: int = 403,
            hint: str | None = None) -> PortalError:
    """A NotAllowed carrying a reason code for the audit log (like EntraError.reason)."""
    error = NotAllowed(message, title=title, status=status, hint=hint)
    error.reason = reason  # type: ignore[attr-defined]
    return error
