"""Several workers at once: they share nothing but the database, so parallel requests for the same identity or
organisation are settled there (unique keys decide who inserts, a conditional UPDATE decides who binds)."""
from __future__ import annotations

import logging
from typing import Callable, TypeVar

from sqlalchemy.exc import IntegrityError

from domain.errors import InvalidInput, NotAllowed, SignInFailed
from models import Organization, db

log = logging.getLogger(__name__)

RACE_ATTEMPTS = 3
T = TypeVar("T")


def settle_races(unit: Callable[[], T]) -> T:
    """Run a unit of work; when a parallel request inserted the same row first, roll back and run it again.

    The second run finds the winner's rows (user, stored profile) and continues with them, so a parallel
    first sign-in of the same account ends signed in instead of failing.
    """
    for _ in range(RACE_ATTEMPTS):
        try:
            return unit()
        except IntegrityError as e:
            db.session.rollback()
            log.info("Parallel write settled, running again: %s", type(e.orig).__name__)
    raise SignInFailed("Another sign-in of the same account finished at the same moment. Sign in again.",
                       status=409, title="Sign in again")


def commit_or_conflict(message: str) -> None:
    """Commit; a unique key another request took first is the user's InvalidInput(message)."""
    try:
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        raise InvalidInput(message) from None


def lock_organization(org: Organization) -> None:
    """Take the organisation's row lock first (PostgreSQL), so parallel activations queue instead of deadlocking."""
    db.session.execute(db.select(Organization).where(Organization.id == org.id).with_for_update()
                       .execution_options(populate_existing=True))


def bind_tenant(org: Organization, tenant_id: str) -> bool:
    """Bind the organisation to the tenant unless it is bound already; True for the one request that bound it."""
    bound = db.session.execute(
        db.update(Organization).where(Organization.id == org.id, Organization.tenant_id.is_(None))
        .values(tenant_id=tenant_id).execution_options(synchronize_session=False)).rowcount == 1
    db.session.refresh(org, ["tenant_id"])  # the winner's value when a parallel activation bound it first
    if org.tenant_id != tenant_id:
        raise NotAllowed("This organisation is bound to another Microsoft tenant. Deactivate SSO first.",
                         title="Different tenant")
    return bound
