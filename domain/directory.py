"""Organisations, their email domains and their users: lookups, home-realm discovery, and the operator's changes."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable

from sqlalchemy.orm.attributes import set_committed_value

import vault
from domain import sealed
from domain.addresses import normalise_domain, normalise_email
from domain.audit import record
from domain.errors import InvalidInput, StoredDataUnreadable
from domain.policy import OPERATOR, Actor, require_admin
from domain.profiles import email_from_copy, scrub_deleted
from domain.races import commit_or_conflict
from domain.throttling import account_key
from models import (AuditEvent, Domain, LoginSession, Organization, ScimGroup, ScimGroupMember, SessionUser, SignInHit,
                    StoredProfile, User, db)

log = logging.getLogger(__name__)


# Each sign-in step looks its email's domain up: built once (building and cache-keying a statement costs more
# than running it).
_ORG_FOR_DOMAIN = db.select(Organization).join(Domain).where(Domain.name == db.bindparam("domain"))


def organization_for_domain(domain: str) -> Organization | None:
    return db.session.execute(_ORG_FOR_DOMAIN, {"domain": domain}).scalar_one_or_none()


def _named(name: str, *, other_than: Organization | None = None) -> Organization | None:
    """The organisation whose name equals `name` without regard to case (Python's case folding, not SQL's)."""
    wanted = name.strip().casefold()
    query = db.select(Organization.id, Organization.name)
    if other_than is not None:
        query = query.where(Organization.id != other_than.id)
    for org_id, org_name in db.session.execute(query):
        if org_name.casefold() == wanted:
            return db.session.get(Organization, org_id)
    return None


def get_organization(name: str) -> Organization:
    """The organisation called `name`, without regard to case."""
    org = db.session.execute(db.select(Organization).where(Organization.name == (name or "").strip())
                             ).scalar_one_or_none() or _named(name or "")
    if org is None:
        raise InvalidInput(f"No organisation is called {name!r}.")
    return org


def organizations() -> list[tuple[Organization, int]]:
    """Every organisation with its number of users, by name."""
    counts = dict(db.session.execute(db.select(User.organization_id, db.func.count())
                                     .group_by(User.organization_id)).all())
    orgs = db.session.execute(db.select(Organization)).scalars().all()
    return [(org, counts.get(org.id, 0)) for org in sorted(orgs, key=lambda o: o.name.casefold())]


@dataclass(frozen=True)
class Realm:
    """Where the login prompt sends an email: 'sso' (Microsoft) or 'password'."""

    kind: str
    email: str
    organization: Organization | None = None


def find_realm(raw_email: str) -> Realm:
    """Home-realm discovery: an organisation with SSO active means Microsoft; anything else a password."""
    email = normalise_email(raw_email)
    org = organization_for_domain(email.rpartition("@")[2])
    if org is not None and org.sso_active:
        return Realm("sso", email, org)
    return Realm("password", email, org)


def user_email(user: User | SessionUser) -> str:
    """The user's email, decrypted; for a Microsoft-only account of an organisation that keeps no copy,
    the one in this session's profile copy, or "" when none is held."""
    if not user.email_enc:
        return email_from_copy(user)
    return sealed.open_sealed("email", user, user.email_enc).decode()


def display_user(user: User | None) -> str:
    """How a user is named on pages: their email, decrypted for display only."""
    return (user_email(user) or "—") if user is not None else "—"


def set_email(user: User, email: str) -> None:
    """Encrypt the email bound to the user's row (flushes first so the row has an id)."""
    if user.id is None:
        user.email_enc = b""
        user.email_hmac = vault.get_vault().blind_index(email)
        db.session.add(user)
        db.session.flush()
    sealed.store("email", user, user, email)


# Built once: every SCIM POST and every password sign-in looks users up by email.
_BY_EMAIL = db.select(User).where(User.email_hmac.in_(db.bindparam("hmacs", expanding=True))).order_by(User.id)
_BY_EMAIL_IN_ORG = _BY_EMAIL.where(User.organization_id == db.bindparam("org_id"))


def users_by_email(email: str, org: Organization | None = None) -> list[User]:
    hmacs = {"hmacs": vault.get_vault().blind_indexes(email)}
    if org is None:
        return list(db.session.execute(_BY_EMAIL, hmacs).scalars())
    return list(db.session.execute(_BY_EMAIL_IN_ORG, {**hmacs, "org_id": org.id}).scalars())


def _org_name(raw: str) -> str:
    name = (raw or "").strip()
    if not name or len(name) > 100 or any(ord(c) < 32 or 0x7F <= ord(c) < 0xA0 for c in name):
        raise InvalidInput("An organisation name is 1 to 100 printable characters.")
    return name


def _free_domains(raw: Iterable[str]) -> list[str]:
    names = sorted({normalise_domain(d) for d in raw})
    taken = db.session.execute(db.select(Domain.name).where(Domain.name.in_(names))).scalars().all()
    if taken:
        raise InvalidInput(f"Domain {taken[0]} belongs to another organisation already.")
    return names


def create_organization(name: str, domains: Iterable[str], actor: Actor = None) -> Organization:
    """Create an organisation with its email domains (audited when an actor is given)."""
    name = _org_name(name)
    if _named(name) is not None:
        raise InvalidInput(f"An organisation called {_named(name).name!r} exists already (names ignore case).")
    names = _free_domains(domains)
    if not names:
        raise InvalidInput("Give the organisation at least one domain.")
    org = Organization(name=name, domains=[Domain(name=d) for d in names])
    db.session.add(org)
    if actor is not None:
        db.session.flush()
        record("org_created", "success", org=org, actor=actor, detail=" ".join(names))
    commit_or_conflict("That organisation or one of its domains exists already.")
    return org


def rename_organization(org: Organization, new_name: str, actor: Actor) -> str:
    """Give an organisation a new name (unique without regard to case); return the old one."""
    require_admin(actor, org, "renaming the organisation")
    new_name = _org_name(new_name)
    clash = _named(new_name, other_than=org)
    if clash is not None:
        raise InvalidInput(f"An organisation called {clash.name!r} exists already (names ignore case).")
    old = org.name
    if old == new_name:
        raise InvalidInput(f"The organisation is called {old!r} already.")
    org.name = new_name
    record("org_renamed", "success", org=org, actor=actor, detail=f"{old} -> {new_name}")
    commit_or_conflict("An organisation with that name exists already.")
    return old


def add_domain(org: Organization, raw_domain: str, actor: Actor) -> str:
    """Add an email domain to an organisation; it must belong to no organisation yet."""
    require_admin(actor, org, "adding a domain")
    domain = normalise_domain(raw_domain)
    if domain in {d.name for d in org.domains}:
        raise InvalidInput(f"{domain} is one of {org.name}'s domains already.")
    _free_domains([domain])
    db.session.add(Domain(name=domain, organization=org))
    record("domain_added", "success", org=org, actor=actor, detail=domain)
    commit_or_conflict(f"Domain {domain} belongs to another organisation already.")
    return domain


def remove_domain(org: Organization, raw_domain: str, actor: Actor) -> tuple[str, int]:
    """Remove an email domain from an organisation; return it and how many of its accounts have an email there.

    The last domain is refused: with none, no email leads to the organisation and no admin can be added
    (delete-org ends an organisation). Password accounts in a removed domain keep signing in with their
    password; Microsoft sign-ins from it no longer reach the organisation.
    """
    require_admin(actor, org, "removing a domain")
    try:
        domain = normalise_domain(raw_domain)
    except InvalidInput:
        domain = (raw_domain or "").strip().lower()
    row = next((d for d in org.domains if d.name == domain), None)
    if row is None:
        raise InvalidInput(f"{domain or repr(raw_domain)} is not one of {org.name}'s domains.")
    if len(org.domains) == 1:
        raise InvalidInput(f"{domain} is {org.name}'s only domain: an organisation needs one. Add another domain "
                           "first, or delete the organisation.")
    users = db.session.execute(db.select(User).where(User.organization_id == org.id)).scalars()
    affected = sum(1 for u in users if _known_email(u).rpartition("@")[2] == domain)
    db.session.delete(row)
    record("domain_removed", "success", org=org, actor=actor, detail=f"{domain} accounts={affected}")
    db.session.commit()
    return domain, affected


def _known_email(user: User) -> str:
    """The user's email if the portal holds a readable one, else "" (for the operator's bookkeeping)."""
    try:
        return user_email(user)
    except StoredDataUnreadable:
        return ""


def delete_groups(org: Organization, group_ids: list[int]) -> None:
    """Delete provisioned groups and their memberships (the caller commits); the organisation's admin-group
    setting is cleared first when it names one of them (its foreign key has no ON DELETE)."""
    sync = {"synchronize_session": False}
    db.session.execute(db.update(Organization).where(Organization.id == org.id,
                                                     Organization.scim_admin_group_id.in_(group_ids))
                       .values(scim_admin_group_id=None), execution_options=sync)
    db.session.execute(db.delete(ScimGroupMember).where(ScimGroupMember.group_id.in_(group_ids)),
                       execution_options=sync)
    db.session.execute(db.delete(ScimGroup).where(ScimGroup.id.in_(group_ids)), execution_options=sync)
    if org.scim_admin_group_id in group_ids:
        set_committed_value(org, "scim_admin_group_id", None)  # the object in hand follows the UPDATE above


def delete_organization(org: Organization, actor: Actor = OPERATOR) -> dict[str, int]:
    """Delete an organisation with its domains, users and everything stored about them; return counts by kind.

    The deletion is recorded in the portal-wide audit log (no organisation), as the organisation's own log goes.
    SQLite does not enforce foreign keys here, so every dependent row is deleted explicitly.
    """
    require_admin(actor, org, "deleting the organisation")
    user_ids = db.select(User.id).where(User.organization_id == org.id).scalar_subquery()
    users = db.session.execute(db.select(User).where(User.organization_id == org.id)).scalars().all()
    keys = {account_key(e) for e in (_known_email(u) for u in users) if e}
    sync = {"synchronize_session": False}
    counts = {
        "user": len(users),
        "profile copy": db.session.execute(db.delete(StoredProfile).where(StoredProfile.user_id.in_(user_ids)),
                                           execution_options=sync).rowcount or 0,
        "session": db.session.execute(db.delete(LoginSession).where(LoginSession.user_id.in_(user_ids)),
                                      execution_options=sync).rowcount or 0,
        "audit event": db.session.execute(db.delete(AuditEvent).where(
            (AuditEvent.organization_id == org.id) | AuditEvent.actor_id.in_(user_ids)), execution_options=sync
        ).rowcount or 0,
    }
    hits = 0
    for key in keys:  # the sign-in throttles count these accounts under their keyed hash
        hits += db.session.execute(db.delete(SignInHit).where(SignInHit.key.contains(key, autoescape=True)),
                                   execution_options=sync).rowcount or 0
    counts["throttle count"] = hits
    db.session.execute(db.update(Organization).where(Organization.id == org.id)
                       .values(sso_activated_by_id=None, admin_consent_by_id=None), execution_options=sync)
    groups = list(db.session.execute(db.select(ScimGroup.id).where(ScimGroup.organization_id == org.id)).scalars())
    delete_groups(org, groups)
    if groups:  # organisations that never provisioned keep their summary as it was
        counts["provisioned group"] = len(groups)
    db.session.execute(db.delete(User).where(User.organization_id == org.id), execution_options=sync)
    counts["domain"] = db.session.execute(db.delete(Domain).where(Domain.organization_id == org.id),
                                          execution_options=sync).rowcount or 0
    org_id = org.id
    db.session.execute(db.delete(Organization).where(Organization.id == org_id), execution_options=sync)
    record("org_deleted", "success", actor=actor,
           detail=f"organisation {org_id} " + " ".join(f"{k.replace(' ', '_')}={v}" for k, v in counts.items()))
    db.session.commit()
    db.session.expire_all()
    scrub_deleted()
    log.info("Organisation %s deleted by the operator: %s", org_id, counts)
    return counts
