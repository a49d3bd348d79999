"""Who may do what: the one place every service asks before it reads or changes an organisation."""
from __future__ import annotations

import logging

from domain.errors import NotAllowed
from models import Organization, User

log = logging.getLogger(__name__)

OPERATOR_NAME = "operator (CLI)"


class Operator:
    """The portal's operator acting through the CLI: named "operator (CLI)" in the audit log."""

    def __str__(self) -> str:
        return OPERATOR_NAME


OPERATOR = Operator()

PROVISIONING_NAME = "Microsoft Entra provisioning"


class Provisioning:
    """Entra's provisioning service acting through the SCIM endpoint with the organisation's token."""

    def __str__(self) -> str:
        return PROVISIONING_NAME


PROVISIONING = Provisioning()
Actor = User | Operator | Provisioning | None


def require_admin(actor: Actor, org: Organization | None, what: str) -> None:
    """The operator (CLI), provisioning (with the organisation's token) and the organisation's own admins may;
    refusals are logged with ids only."""
    if isinstance(actor, (Operator, Provisioning)) and org is not None:
        return
    if org is None or not isinstance(actor, User) or not actor.is_admin or actor.organization_id != org.id:
        log.warning("Refused %s for user %s", what, getattr(actor, "id", None) or "anonymous")
        raise NotAllowed("Only administrators of the organisation can do this.")

