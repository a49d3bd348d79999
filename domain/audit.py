"""Writing the audit log: one event per outcome, added to the caller's unit of work."""
from __future__ import annotations

import logging
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

import entra
from domain.errors import PortalError
from domain.policy import Actor, Operator, Provisioning
from models import AuditEvent, Organization, User, db

log = logging.getLogger(__name__)

# The client address of the request being served; the web side sets it for each request (None in the CLI).
client_address: ContextVar[str | None] = ContextVar("client_address", default=None)


def record(action: str, outcome: str, *, org: Organization | None = None, actor: Actor = None,
           detail: str = "") -> AuditEvent:
    """Add an audit event to the current unit of work (the caller commits)."""
    by_operator, by_provisioning = isinstance(actor, Operator), isinstance(actor, Provisioning)
    event = AuditEvent(organization_id=org.id if org is not None else None,
                       actor=actor if isinstance(actor, User) else None, by_operator=by_operator,
                       by_provisioning=by_provisioning, action=action, outcome=outcome, detail=detail[:200],
                       ip=client_address.get())
    db.session.add(event)
    return event


@contextmanager
def failures_recorded(action: str, org: Organization | None, actor: Actor) -> Iterator[None]:
    """A refusal or an Entra error inside: undo the unit of work, record the failure with its reason, re-raise."""
    try:
        yield
    except (entra.EntraError, PortalError) as e:
        db.session.rollback()
        reason = getattr(e, "reason", None) or type(e).__name__
        record(action, "failure", org=org, actor=actor, detail=reason)
        db.session.commit()
        log.info("%s failed: %s", action, reason)
        raise
