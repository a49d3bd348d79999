"""User provisioning (SCIM 2.0) from Microsoft Entra: the organisation's token, provisioned users and groups, and the
admin group. The SCIM endpoint (blueprints/scim.py) parses and serialises; every change is made here, audited with
the actor PROVISIONING, and goes through the USERS tab's services (members.py) for blocking, removal and roles.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from domain import sealed
from domain.audit import record
from domain.errors import InvalidInput, PortalError
from domain.members import set_role
from domain.policy import PROVISIONING, Actor, require_admin
from models import Organization, ScimGroup, ScimGroupMember, User, db, utcnow

log = logging.getLogger(__name__)

TOUCH_EVERY = timedelta(minutes=1)  # when Entra last called is written at most this often


class NoSuchGroup(PortalError):
    """A group id that is not one of the organisation's provisioned groups: a 404."""

    status = 404
    title = "No such group"


# -- the token ----------------------------------------------------------------------------------------------------

def token_hash(raw: str) -> str:
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


def generate_token(org: Organization, actor: Actor) -> str:
    """Make the organisation's bearer token (replacing any, which stops working at once); return it to be shown
    once. Only while single sign-on is active: provisioned users sign in with Microsoft."""
    require_admin(actor, org, "generating a provisioning token")
    if not org.sso_active:
        raise InvalidInput("Activate single sign-on first: provisioned users sign in with Microsoft.",
                           title="Single sign-on is off")
    raw = secrets.token_urlsafe(48)
    rotated = org.scim_token_hash is not None
    org.scim_token_hash, org.scim_token_created_at = token_hash(raw), utcnow()
    record("scim_token_rotated" if rotated else "scim_token_generated", "success", org=org, actor=actor)
    db.session.commit()
    return raw


def turn_off(org: Organization, actor: Actor) -> bool:
    """Forget the token (Entra's calls fail from now on); provisioned users and groups stay. False if none was set."""
    require_admin(actor, org, "turning provisioning off")
    if org.scim_token_hash is None:
        return False
    org.scim_token_hash, org.scim_token_created_at, org.scim_last_call_at = None, None, None
    record("scim_turned_off", "success", org=org, actor=actor)
    db.session.commit()
    return True


def organization_for_token(raw: str | None) -> Organization | None:
    """The organisation whose token this is, while its single sign-on is active; else None."""
    if not raw:
        return None
    digest = token_hash(raw)
    org = db.session.execute(db.select(Organization).where(Organization.scim_token_hash == digest)
                             ).scalar_one_or_none()
    if org is None or not hmac.compare_digest(org.scim_token_hash or "", digest) or not org.sso_active:
        return None
    return org


def touch(org: Organization) -> None:
    """Note that Entra called now (at most one write a minute, a conditional update so workers do not race)."""
    now = utcnow()
    if org.scim_last_call_at is not None and now - org.scim_last_call_at < TOUCH_EVERY:
        return
    db.session.execute(db.update(Organization).where(
        Organization.id == org.id,
        (Organization.scim_last_call_at.is_(None)) | (Organization.scim_last_call_at <= now - TOUCH_EVERY))
        .values(scim_last_call_at=now).execution_options(synchronize_session=False))
    db.session.commit()
    db.session.refresh(org, ["scim_last_call_at"])


# -- the SECURITY block -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GroupChoice:
    scim_id: str
    name: str


@dataclass(frozen=True)
class ProvisioningStatus:
    """What the SECURITY tab's provisioning block shows."""

    token_set: bool
    token_created_at: datetime | None
    last_call_at: datetime | None
    users: int  # provisioned users
    not_linked: int  # provisioned users not yet linked to a Microsoft sign-in (externalId is not their object id)
    groups: int
    group_choices: list[GroupChoice]  # for "Members of this group are admins", by name
    admin_group: str | None  # the chosen group's scim_id


def status(org: Organization) -> ProvisioningStatus:
    provisioned = db.select(db.func.count()).select_from(User).where(User.organization_id == org.id,
                                                                     User.scim_id.is_not(None))
    users = db.session.scalar(provisioned) or 0
    not_linked = db.session.scalar(provisioned.where(User.object_id.is_(None))) or 0
    groups = list(db.session.execute(db.select(ScimGroup).where(ScimGroup.organization_id == org.id)).scalars())
    choices = sorted((GroupChoice(g.scim_id, group_name(g)) for g in groups), key=lambda c: c.name.casefold())
    admin = next((g.scim_id for g in groups if g.id == org.scim_admin_group_id), None)
    return ProvisioningStatus(token_set=org.scim_token_hash is not None, token_created_at=org.scim_token_created_at,
                              last_call_at=org.scim_last_call_at, users=users, not_linked=not_linked,
                              groups=len(groups), group_choices=choices, admin_group=admin)


def group_name(group: ScimGroup) -> str:
    return sealed.open_sealed("group_name", group, group.name_enc).decode()


# -- the admin group ----------------------------------------------------------------------------------------------

def _group(org: Organization, scim_id: str | None) -> ScimGroup:
    group = db.session.execute(db.select(ScimGroup).where(ScimGroup.scim_id == (scim_id or ""))).scalar_one_or_none()
    if group is None or group.organization_id != org.id:
        raise NoSuchGroup("That group is not one of your organisation's provisioned groups.")
    return group


def set_admin_group(org: Organization, group_scim_id: str | None, actor: Actor) -> bool:
    """Name the group whose members are admins (None: no group); its current members become admins at once.
    False when unchanged."""
    require_admin(actor, org, "the admin group")
    group = _group(org, group_scim_id) if group_scim_id else None
    wanted = group.id if group is not None else None
    if org.scim_admin_group_id == wanted:
        return False
    org.scim_admin_group_id = wanted
    record("scim_admin_group", "success", org=org, actor=actor,
           detail=f"group {group.scim_id}" if group is not None else "none")
    db.session.commit()
    if group is not None:
        for user in _members(group):
            _promote(org, user)
    return True


def _members(group: ScimGroup) -> list[User]:
    return list(db.session.execute(db.select(User).join(ScimGroupMember, ScimGroupMember.user_id == User.id)
                                   .where(ScimGroupMember.group_id == group.id).order_by(User.id)).scalars())


def _promote(org: Organization, user: User) -> None:
    set_role(org, user, "admin", PROVISIONING)


def _demote(org: Organization, user: User) -> None:
    """Back to member, unless a break-glass account (never demoted) or the last admin (refused and audited by
    set_role; the membership change stands)."""
    if user.break_glass or not user.is_admin:
        return
    try:
        set_role(org, user, "member", PROVISIONING)
    except PortalError:
        log.info("Admin group: user %s of organisation %s stays an admin (the last one)", user.id, org.id)
