"""An organisation's users as its admins manage them: the USERS tab's pages, roles, blocking, sign-out, removal.

Every change keeps one rule: the organisation always has an active admin who can sign in (the last one cannot be
demoted, blocked or removed, by anyone, themselves included).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from domain import sealed
from domain.addresses import normalise_email, page_number, parse_number
from domain.audit import record
from domain.directory import user_email, users_by_email
from domain.errors import InvalidInput, PortalError, StoredDataUnreadable, refused
from domain.policy import Actor, require_admin
from domain.profiles import scrub_deleted
from domain.sessions import end_all_sessions
from domain.throttling import account_key
from models import AuditEvent, Organization, ScimGroupMember, SignInHit, StoredProfile, User, db

log = logging.getLogger(__name__)

USERS_PAGE_SIZE = 25
ENTRA_ADMIN_ROLE = "Portal.Admin"  # the app role's value that makes an SSO user an admin
ROLES = ("admin", "member")


class NoSuchUser(PortalError):
    """A user id that is not one of the organisation's users (another organisation's, or none): a 404."""

    status = 404
    title = "No such user"


@dataclass(frozen=True)
class MemberRow:
    """One row of the USERS tab, decrypted for display."""

    id: int
    name: str
    email: str
    role: str
    sign_in: str  # "Microsoft", "password" or "both"
    break_glass: bool
    last_sign_in_at: datetime | None
    blocked: bool
    role_from_entra: bool  # the role is set by Entra app roles at sign-in, not on this page
    provisioned: bool  # Microsoft Entra provisions this user (SCIM): it creates, blocks and removes them

    @property
    def status_code(self) -> str:
        """"blocked", "provisioned" (provisioned, not signed in yet) or "active"."""
        if self.blocked:
            return "blocked"
        return "provisioned" if self.provisioned and self.last_sign_in_at is None else "active"

    @property
    def status(self) -> str:
        return {"blocked": "Blocked", "provisioned": "Provisioned — not signed in yet"}.get(self.status_code, "Active")

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "email": self.email, "role": self.role, "sign_in": self.sign_in,
                "break_glass": self.break_glass, "status": self.status_code, "provisioned": self.provisioned,
                "last_sign_in": self.last_sign_in_at.strftime("%Y-%m-%dT%H:%M:%SZ") if self.last_sign_in_at else None}


@dataclass(frozen=True)
class MembersPage:
    rows: list[MemberRow]
    page: int
    pages: int
    total: int
    email: str = ""  # the address searched for, if any


def sign_in_methods(user: User) -> str:
    if user.password_hash and user.object_id:
        return "both"
    return "password" if user.password_hash else "Microsoft"


def role_from_entra(user: User, org: Organization) -> bool:
    """While "Admins are assigned in Microsoft Entra" is on, the role of an SSO user (not a break-glass account)
    is set at each sign-in from the ID token's `roles`; not while provisioning names an admin group (it decides)."""
    return (bool(org.admins_from_entra) and org.scim_admin_group_id is None and user.object_id is not None
            and not user.break_glass)


def _rows(org: Organization, users: list[User]) -> list[MemberRow]:
    """Decrypt the names and emails of these users only (one query for their profile copies)."""
    copies = dict(db.session.execute(db.select(StoredProfile.user_id, StoredProfile.data_enc)
                                     .where(StoredProfile.user_id.in_([u.id for u in users]))).all()) if users else {}
    rows = []
    for user in users:
        name, email = "", ""
        try:
            email = user_email(user)
            if user.id in copies:
                name = str(sealed.open_sealed("profile", user, copies[user.id]).get("displayName") or "")
            elif user.scim_data_enc:  # provisioned, not signed in yet: the name Entra sent
                data = sealed.open_sealed("scim", user, user.scim_data_enc)
                name = str(data.get("displayName") or "") if isinstance(data, dict) else ""
        except StoredDataUnreadable:
            name = name or "(stored data cannot be read)"
        rows.append(MemberRow(id=user.id, name=name, email=email, role=user.role, sign_in=sign_in_methods(user),
                              break_glass=bool(user.break_glass), last_sign_in_at=user.last_sign_in_at,
                              blocked=bool(user.blocked), role_from_entra=role_from_entra(user, org),
                              provisioned=user.scim_id is not None))
    return rows


def members_page(org: Organization, page: str | int, actor: Actor, *, email: str = "") -> MembersPage:
    """One page of the organisation's users, newest sign-in first (never signed in last); or the users whose
    email is exactly `email`, found by its keyed lookup. A page that does not exist is a 404."""
    require_admin(actor, org, "listing users")
    if email.strip():
        address = normalise_email(email)
        found = users_by_email(address, org)
        return MembersPage(rows=_rows(org, found), page=1, pages=1, total=len(found), email=address)
    total = db.session.scalar(db.select(db.func.count()).select_from(User)
                              .where(User.organization_id == org.id)) or 0
    number, pages = page_number(page, total, USERS_PAGE_SIZE, "The list of users")
    # The page's ids first, from the index alone (the skipped rows are never read), then their rows.
    ids = list(db.session.execute(
        db.select(User.id).where(User.organization_id == org.id)
        .order_by(User.last_sign_in_at.desc().nulls_last(), User.id.desc())
        .offset((number - 1) * USERS_PAGE_SIZE).limit(USERS_PAGE_SIZE)).scalars())
    loaded = {u.id: u for u in db.session.execute(db.select(User).where(User.id.in_(ids))).scalars()} if ids else {}
    users = [loaded[i] for i in ids if i in loaded]
    return MembersPage(rows=_rows(org, users), page=number, pages=pages, total=total)


def all_members(org: Organization, actor: Actor) -> list[MemberRow]:
    """Every user of the organisation, newest sign-in first (the CLI's `users`)."""
    require_admin(actor, org, "listing users")
    users = list(db.session.execute(db.select(User).where(User.organization_id == org.id)
                                    .order_by(User.last_sign_in_at.desc().nulls_last(), User.id.desc())).scalars())
    return _rows(org, users)


def member(org: Organization, user_id: Any, actor: Actor) -> User:
    """The organisation's user with this id; any other id (another organisation's user, none, not a number) is a
    404, so an admin learns nothing about other organisations."""
    require_admin(actor, org, "managing users")
    number = parse_number(str(user_id))
    user = db.session.get(User, number) if number is not None else None
    if user is None or user.organization_id != org.id:
        raise NoSuchUser("That user is not one of your organisation's users.")
    return user


def member_by_email(org: Organization, raw_email: str, actor: Actor) -> User:
    """The organisation's user with this email (the CLI names users by email)."""
    require_admin(actor, org, "managing users")
    found = users_by_email(normalise_email(raw_email), org)
    if not found:
        raise InvalidInput(f"{org.name} has no user with the email {normalise_email(raw_email)}.")
    return found[0]


def can_sign_in(user: User, org: Organization) -> bool:
    """Whether the user could sign in now: not blocked, and a password the organisation accepts, or Microsoft."""
    if user.blocked:
        return False
    password_ok = bool(user.password_hash) and (not (org.sso_active and org.require_sso) or user.break_glass)
    microsoft_ok = user.object_id is not None and bool(org.sso_active)
    return password_ok or microsoft_ok


def is_last_admin(user: User, org: Organization) -> bool:
    """Whether the user is the organisation's only active admin who can sign in (so must stay one)."""
    if not user.is_admin or not can_sign_in(user, org):
        return False
    admins = db.session.execute(db.select(User).where(User.organization_id == org.id, User.role == "admin",
                                                      User.id != user.id)).scalars()
    return not any(can_sign_in(other, org) for other in admins)


def _keep_an_admin(user: User, org: Organization, action: str, actor: Actor, doing: str) -> None:
    if is_last_admin(user, org):
        record(action, "failure", org=org, actor=actor, detail=f"user {user.id} last_admin")
        db.session.commit()
        raise refused("last_admin", f"This is the only active administrator of {org.name} who can sign in, so "
                      f"they cannot be {doing}: nobody could manage the organisation any more. Make someone else an "
                      "administrator first.", title="The last administrator stays", status=409)


def set_role(org: Organization, user: User, role: str, actor: Actor) -> bool:
    """Make a user an admin or a member; False when they are one already."""
    require_admin(actor, org, "changing a role")
    if role not in ROLES:
        raise InvalidInput("A role is admin or member.")
    if user.role == role:
        return False
    if role_from_entra(user, org):
        record("role_changed", "failure", org=org, actor=actor, detail=f"user {user.id} entra_assigns_roles")
        db.session.commit()
        raise refused("entra_assigns_roles", "Administrators who sign in with Microsoft are assigned in Microsoft "
                      f"Entra (app role {ENTRA_ADMIN_ROLE}): change the assignment there; it applies at their next "
                      "sign-in.", title="Roles come from Microsoft Entra", status=409)
    if role == "member":
        _keep_an_admin(user, org, "role_changed", actor, "made a member")
    old, user.role = user.role, role
    record("role_changed", "success", org=org, actor=actor, detail=f"user {user.id} {old}->{role}")
    db.session.commit()
    return True


def set_blocked(org: Organization, user: User, blocked: bool, actor: Actor) -> int:
    """Block (every session ends at once, no sign-in by any method) or unblock a user; return sessions ended."""
    require_admin(actor, org, "blocking a user")
    action = "user_blocked" if blocked else "user_unblocked"
    if bool(user.blocked) == blocked:
        return 0
    if blocked:
        _keep_an_admin(user, org, action, actor, "blocked")
    user.blocked = blocked
    ended = end_all_sessions(user.id) if blocked else 0
    record(action, "success", org=org, actor=actor, detail=f"user {user.id}" + (f" sessions_ended={ended}"
                                                                                  if blocked else ""))
    db.session.commit()
    scrub_deleted()
    return ended


def sign_out_everywhere(org: Organization, user: User, actor: Actor) -> int:
    """End every session of the user; return how many ended."""
    require_admin(actor, org, "signing a user out")
    ended = end_all_sessions(user.id)
    record("signed_out_everywhere", "success", org=org, actor=actor, detail=f"user {user.id} sessions_ended={ended}")
    db.session.commit()
    scrub_deleted()
    return ended


def remove(org: Organization, user: User, actor: Actor) -> None:
    """Delete the user: sessions, profile copy and photo, email, sign-in throttle counts and the account.

    Their audit events stay, without the actor (the log keeps no personal data). A removed Microsoft user who
    signs in again is created anew as a member: blocking is the way to keep someone out.
    """
    require_admin(actor, org, "removing a user")
    _keep_an_admin(user, org, "user_removed", actor, "removed")
    user_id = user.id
    erase(user)
    record("user_removed", "success", org=org, actor=actor if getattr(actor, "id", None) != user_id else None,
           detail=f"user {user_id}")
    db.session.commit()
    db.session.expire_all()
    scrub_deleted()
    log.info("User %s of organisation %s removed", user_id, org.id)


def erase(user: User) -> None:
    """Delete the user's row and what refers to it: sessions, profile copy and photo, group memberships, sign-in
    throttle counts; their audit events stay, without the actor (the caller audits and commits)."""
    user_id = user.id
    try:
        key = account_key(user_email(user)) if user.password_hash else None
    except StoredDataUnreadable:
        key = None
    sync = {"synchronize_session": False}
    end_all_sessions(user_id)
    db.session.execute(db.delete(StoredProfile).where(StoredProfile.user_id == user_id), execution_options=sync)
    db.session.execute(db.delete(ScimGroupMember).where(ScimGroupMember.user_id == user_id), execution_options=sync)
    if key:
        db.session.execute(db.delete(SignInHit).where(SignInHit.key.contains(key, autoescape=True)),
                           execution_options=sync)
    # SQLite does not enforce the foreign keys' ON DELETE here: clear the references by hand.
    db.session.execute(db.update(AuditEvent).where(AuditEvent.actor_id == user_id).values(actor_id=None),
                       execution_options=sync)
    db.session.execute(db.update(Organization).where(Organization.sso_activated_by_id == user_id)
                       .values(sso_activated_by_id=None), execution_options=sync)
    db.session.execute(db.update(Organization).where(Organization.admin_consent_by_id == user_id)
                       .values(admin_consent_by_id=None), execution_options=sync)
    db.session.execute(db.delete(User).where(User.id == user_id), execution_options=sync)


def set_admins_from_entra(org: Organization, on: bool, actor: Actor) -> bool:
    """Turn "Admins are assigned in Microsoft Entra" on or off; False when unchanged."""
    require_admin(actor, org, "the Entra admin roles setting")
    if bool(org.admins_from_entra) == on:
        return False
    org.admins_from_entra = on
    record("admins_from_entra", "success", org=org, actor=actor, detail="on" if on else "off")
    db.session.commit()
    return True


def role_at_sign_in(org: Organization, user: User, claims: dict[str, Any]) -> None:
    """While the setting is on (and no provisioned admin group is set), the ID token's `roles` decide an SSO
    user's role (the caller commits).

    The last active admin who can sign in is not demoted by a token without the role (recorded as a failure),
    so a mistaken assignment in Entra cannot leave the organisation without an admin.
    """
    if not role_from_entra(user, org):
        return
    roles = claims.get("roles")
    wanted = "admin" if isinstance(roles, list) and ENTRA_ADMIN_ROLE in roles else "member"
    if user.role == wanted:
        return
    if wanted == "member" and is_last_admin(user, org):
        record("role_changed", "failure", org=org, actor=user, detail=f"user {user.id} last_admin entra")
        return
    old, user.role = user.role, wanted
    record("role_changed", "success", org=org, actor=user, detail=f"user {user.id} {old}->{wanted} entra")


def blocked_refusal(org: Organization) -> PortalError:
    return refused("blocked", f"Your account is blocked in {org.name}'s portal. Contact your organisation's "
                   "administrator if you need access.", title="Your account is blocked")

