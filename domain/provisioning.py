"""User provisioning (SCIM 2.0) from Microsoft Entra: the organisation's token, provisioned users and groups, and the
admin group. The SCIM endpoint (blueprints/scim.py) parses and serialises; every change is made here, audited with
the actor PROVISIONING, and goes through the USERS tab's services (members.py) for blocking, removal and roles.
"""
from __future__ import annotations

import functools
import hashlib
import hmac
import importlib
import logging
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

from sqlalchemy import Integer, String, bindparam

import vault
from domain import sealed
from domain.addresses import normalise_email
from domain.audit import record
from domain.directory import delete_groups, set_email, user_email, users_by_email
from domain.errors import InvalidInput, PortalError
from domain.members import erase, is_last_admin, remove, set_blocked, set_role
from domain.policy import PROVISIONING, Actor, require_admin
from models import Domain, Organization, ScimGroup, ScimGroupMember, User, db, utcnow

if TYPE_CHECKING:
    from scim2_models import EnterpriseUser, User as ScimUser
    EntraUser = ScimUser[EnterpriseUser]

log = logging.getLogger(__name__)


class Imported:
    """A library imported at its first use. scim2-models (with pydantic and lark) is 16 MB that a web worker
    carries only once Entra calls it: the token and status services here need none of it."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attribute: str):
        return getattr(importlib.import_module(self._name), attribute)


scim = Imported("scim2_models")

TOUCH_EVERY = timedelta(minutes=1)  # when Entra last called is written at most this often
MAX_RESULTS = 100  # a page of GET /Users or /Groups holds at most this many resources
ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"  # scim.EnterpriseUser.__schema__
SUPPORTED_FILTERS = {
    "User": 'userName eq "…", externalId eq "…" and emails[type eq "work"].value eq "…"',
    "Group": 'displayName eq "…" and externalId eq "…"',
}
LAST_ADMIN = ("This is the organisation's last administrator who can sign in: provisioning cannot block, remove "
              "or demote them. Make someone else an administrator first.")


@functools.cache
def entra_user() -> type[EntraUser]:
    """The User resource with the enterprise extension, as Entra provisions it."""
    return scim.User[scim.EnterpriseUser]


@functools.cache
def specialised(generic: type, model: type) -> type:
    """A scim2-models generic class for one resource type (ListResponse[…], PatchOp[…], ResponseParameters[…]), built
    once: each subscription makes pydantic build and check a new class (milliseconds of CPU a request)."""
    return generic[model]


# The statements of every SCIM request, built once with bound parameters: building a statement and computing its cache
# key cost more than SQLite takes to run it (throttles.py does the same).
_ORG_BY_TOKEN = db.select(Organization).where(Organization.scim_token_hash == bindparam("digest", type_=String))
_USER_BY_SCIM_ID = db.select(User).where(User.scim_id == bindparam("scim_id", type_=String))
_GROUP_BY_SCIM_ID = db.select(ScimGroup).where(ScimGroup.scim_id == bindparam("scim_id", type_=String))
_DOMAIN_OWNER = db.select(Domain.organization_id).where(Domain.name == bindparam("name", type_=String))
_ORG_ID = bindparam("org_id", type_=Integer)
_HMACS = bindparam("hmacs", expanding=True)  # typed by the column it is compared with
_OTHER_USERS = db.select(User.id).where(User.organization_id == _ORG_ID, User.id != bindparam("not_id", type_=Integer))
_OTHER_WITH_EMAIL = _OTHER_USERS.where(User.email_hmac.in_(_HMACS)).limit(1)
_OTHER_WITH_EXTERNAL_ID = _OTHER_USERS.where(User.scim_id.is_not(None), User.scim_external_id_hmac.in_(_HMACS)).limit(1)
_LINKED_TO_OBJECT = db.select(User).where(
    User.organization_id == _ORG_ID, User.scim_id.is_(None), User.tenant_id == bindparam("tenant_id", type_=String),
    User.object_id == bindparam("object_id", type_=String))
_PROVISIONED = db.select(User).where(User.organization_id == _ORG_ID, User.scim_id.is_not(None))
_USERS = {  # GET /Users: by filter attribute (None: no filter)
    None: _PROVISIONED,
    "externalid": _PROVISIONED.where(User.scim_external_id_hmac.in_(_HMACS)),
    "email": _PROVISIONED.where(User.email_hmac.in_(_HMACS)),
}
_ORG_GROUPS = db.select(ScimGroup).where(ScimGroup.organization_id == _ORG_ID)
_GROUPS = {  # GET /Groups: by filter attribute
    None: _ORG_GROUPS,
    "displayname": _ORG_GROUPS.where(ScimGroup.name_hmac.in_(_HMACS)),
    "externalid": _ORG_GROUPS.where(ScimGroup.external_id_hmac.in_(_HMACS)),
}


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
    org = db.session.execute(_ORG_BY_TOKEN, {"digest": digest}).scalar_one_or_none()
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
    False when unchanged. Only while single sign-on is active, like the token."""
    require_admin(actor, org, "the admin group")
    if not org.sso_active:
        raise InvalidInput("User provisioning needs single sign-on: activate it first.",
                           title="Single sign-on is off")
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
            _promote(org, user, actor)
    return True


def _members(group: ScimGroup) -> list[User]:
    return list(db.session.execute(db.select(User).join(ScimGroupMember, ScimGroupMember.user_id == User.id)
                                   .where(ScimGroupMember.group_id == group.id).order_by(User.id)).scalars())


def _promote(org: Organization, user: User, actor: Actor = PROVISIONING) -> None:
    set_role(org, user, "admin", actor)


def _demote(org: Organization, user: User) -> None:
    """Back to member, unless a break-glass account (never demoted) or the last admin (refused and audited by
    set_role; the membership change stands)."""
    if user.break_glass or not user.is_admin:
        return
    try:
        set_role(org, user, "member", PROVISIONING)
    except PortalError:
        log.info("Admin group: user %s of organisation %s stays an admin (the last one)", user.id, org.id)


# -- users --------------------------------------------------------------------------------------------------------

# The SCIM attributes never kept in the sealed copy: identifiers and state have their own columns, and a password
# (Entra sends none by default) is never stored.
_NOT_KEPT = {"id", "meta", "schemas", "userName", "active", "groups", "password"}


def _refusal(exception: scim.SCIMException, org: Organization, action: str, detail: str) -> scim.SCIMException:
    """Record a refused change (ids and a reason code only) and return the SCIM error to raise."""
    db.session.rollback()
    record(action, "failure", org=org, actor=PROVISIONING, detail=detail)
    db.session.commit()
    return exception


def _user(org: Organization, scim_id: str) -> User:
    """The organisation's provisioned user with this id; anything else (another organisation's) is a 404."""
    user = db.session.execute(_USER_BY_SCIM_ID, {"scim_id": scim_id}).scalar_one_or_none()
    if user is None or user.organization_id != org.id:
        raise scim.NotFoundException(detail="No such user.")
    return user


def _kept(org: Organization, user: User) -> dict:
    if not org.store_profiles or not user.scim_data_enc:
        return {}
    data = sealed.open_sealed("scim", user, user.scim_data_enc)
    return data if isinstance(data, dict) else {}


def user_resource(org: Organization, user: User) -> EntraUser:
    """The user as SCIM shows them: userName (their email), active and what the portal keeps."""
    data = _kept(org, user)
    schemas = [scim.User.__schema__] + ([ENTERPRISE] if ENTERPRISE in data else [])
    resource = entra_user().model_validate({**data, "schemas": [str(s) for s in schemas], "id": user.scim_id,
                                         "userName": user_email(user), "active": not user.blocked})
    resource.meta = _meta(user)
    return resource


def _meta(user: User) -> scim.Meta:
    return scim.Meta(resource_type="User", created=_utc(user.created_at), last_modified=_utc(user.created_at))


@functools.cache
def _aliases() -> dict[str, str]:
    """The User resource's fields by the name a dump gives them (userName: user_name, the extension's URN: ...)."""
    return {field.serialization_alias or field.alias or name: name for name, field in entra_user().model_fields.items()}


def _as_stored(user: User, email: str, resource: EntraUser, data: dict) -> EntraUser:
    """What user_resource() would read back after _store(): `resource` (the body, valid already) with only what was
    kept (`data`, as _store returned it), the id, userName and active. A copy of valid values, not validated again."""
    aliases = _aliases()
    update = {name: None for name in aliases.values()}
    update.update((aliases[key], getattr(resource, aliases[key])) for key in data)
    update.update(schemas=[str(scim.User.__schema__)] + ([ENTERPRISE] if ENTERPRISE in data else []),
                  id=user.scim_id, user_name=email, active=not user.blocked, meta=_meta(user))
    return resource.model_copy(update=update)


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=timezone.utc)  # stored naive, in UTC


def _user_name(org: Organization, raw: str | None) -> str:
    """userName (the UPN) as the user's email: one of the organisation's domains, so provisioning cannot claim an
    address of another organisation."""
    try:
        email = normalise_email(raw or "")
    except InvalidInput:
        raise scim.InvalidValueException(detail="userName is not an email address (a UPN).") from None
    if _looked_up().scalar(_DOMAIN_OWNER, {"name": email.rpartition("@")[2]}) != org.id:
        raise scim.InvalidValueException(detail="userName is not in one of the organisation's domains.")
    return email


def _looked_up():
    """The session's connection (its transaction), for the look-ups of ids above: they load no objects, and through the
    ORM each cost twice as much (~75 against ~32 µs). Callers look before changing anything: nothing to flush first."""
    return db.session.connection()


def _external_ids(value: str | None) -> list[bytes]:
    return vault.get_vault().blind_indexes(value) if value else []


def _taken(org: Organization, user: User | None, email: str | None, external_id: str | None) -> str | None:
    """Which unique attribute another user of the organisation holds already: "userName", "externalId" or None."""
    others = {"org_id": org.id, "not_id": user.id if user is not None and user.id is not None else 0}
    if email is not None and _looked_up().execute(
            _OTHER_WITH_EMAIL, {**others, "hmacs": vault.get_vault().blind_indexes(email)}).first():
        return "userName"
    if external_id and _looked_up().execute(
            _OTHER_WITH_EXTERNAL_ID, {**others, "hmacs": _external_ids(external_id)}).first():
        return "externalId"
    return None


def _store(org: Organization, user: User, resource: EntraUser) -> dict:
    """Keep what SCIM sent: the sealed copy only while the organisation stores copies, the externalId's index always.
    What was kept (the sealed copy, or nothing)."""
    data = {k: v for k, v in resource.model_dump(mode="json").items() if k not in _NOT_KEPT}
    if org.store_profiles:
        sealed.store("scim", user, user, data)
        return data
    user.scim_data_enc = None
    user.scim_external_id_hmac = sealed.blind_index("scim", data)
    return {}


def _check_active(org: Organization, user: User, active: bool | None, action: str) -> None:
    """Refuse (audited, nothing changed) a block of a break-glass account or of the organisation's last admin."""
    if active is not False or user.blocked:
        return
    if user.break_glass:
        raise _refusal(scim.MutabilityException(detail="This is a break-glass account: provisioning never blocks "
                                                       "it."), org, action, f"user {user.id} break_glass")
    if is_last_admin(user, org):
        raise _refusal(scim.MutabilityException(detail=LAST_ADMIN), org, action, f"user {user.id} last_admin")


def _set_active(org: Organization, user: User, active: bool | None) -> None:
    """Block (sessions end at once) or unblock through the USERS tab's service; it commits."""
    if active is None or bool(user.blocked) == (not active):
        _commit_keeping_loaded()
        return
    set_blocked(org, user, not active, PROVISIONING)


def _commit_keeping_loaded() -> None:
    """Commit without expiring the loaded rows: they hold what this transaction wrote, and the answer is built from
    them (user_resource) without loading the user and the organisation again."""
    session = db.session()
    session.expire_on_commit = False
    try:
        session.commit()
    finally:
        session.expire_on_commit = True


_OBJECT_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)


def _another_object(user: User, external_id: str | None) -> bool:
    """Whether externalId names an Entra object other than the Microsoft account the user is linked to: only an
    object id can say so. Any other value (Entra's default mailNickname, an employee number) does not contradict the
    link: the portal keeps no alias of linked users to compare with."""
    return bool(user.object_id and external_id and _OBJECT_ID.fullmatch(external_id)
                and external_id.lower() != user.object_id.lower())


def _adoptable(org: Organization, email: str, external_id: str | None) -> User | None:
    """The organisation's user a POST /Users takes over: the one with this userName, else (an organisation that
    keeps no copies keeps no email of Microsoft-only users) the one linked to the object id externalId names.
    409 when that user is provisioned already, a break-glass account, or linked to another Microsoft account."""
    existing = next(iter(users_by_email(email, org)), None)
    if existing is None and external_id and _OBJECT_ID.fullmatch(external_id) and org.tenant_id:
        existing = db.session.execute(_LINKED_TO_OBJECT, {  # Entra's object ids are lower case
            "org_id": org.id, "tenant_id": org.tenant_id, "object_id": external_id.lower()}).scalar_one_or_none()
    if existing is not None and existing.scim_id is not None:
        raise scim.UniquenessException(detail="userName is taken.")
    if existing is not None and (existing.break_glass or _another_object(existing, external_id)):
        raise scim.UniquenessException(detail="userName belongs to a portal user provisioning cannot take over.")
    return existing


def create_user(org: Organization, resource: EntraUser) -> EntraUser:
    """POST /Users: a new provisioned user, or the organisation's existing user adopted (see _adoptable)."""
    email = _user_name(org, resource.user_name)
    external_id = resource.external_id
    existing = _adoptable(org, email, external_id)
    if _taken(org, existing, None, external_id):
        raise scim.UniquenessException(detail="externalId is taken.")
    if existing is not None:
        _check_active(org, existing, resource.active, "scim_user_created")
    # By the organisation's id, not the relationship: the organisation is then no part of the user's flushes.
    user = existing or User(organization_id=org.id, role="member")
    if existing is None or not existing.email_enc or user_email(existing) != email:
        set_email(user, email)  # flushes: the row has its id for the sealed copy
    user.scim_id = secrets.token_urlsafe(16)
    kept = _store(org, user, resource)
    if existing is None:
        user.blocked = resource.active is False
    record("scim_user_created", "success", org=org, actor=PROVISIONING,
           detail=f"user {user.id}" + (" adopted" if existing is not None else "")
           + (" inactive" if existing is None and user.blocked else ""))
    _set_active(org, user, resource.active if existing is not None else None)
    log.info("Provisioned user %s in organisation %s", user.id, org.id)
    return _as_stored(user, email, resource, kept)


def get_user(org: Organization, scim_id: str) -> EntraUser:
    return user_resource(org, _user(org, scim_id))


def replace_user(org: Organization, scim_id: str, resource: EntraUser) -> EntraUser:
    """PUT /Users/{id}: the user becomes what the body says (userName, externalId, active, the kept copy)."""
    return _update(org, _user(org, scim_id), resource)


def patch_user(org: Organization, scim_id: str, patch: scim.PatchOp) -> EntraUser:
    """PATCH /Users/{id}: the operations applied to the user as SCIM shows them, then stored like a PUT."""
    user = _user(org, scim_id)
    resource = user_resource(org, user)
    patch.patch(resource)
    return _update(org, user, resource)


def _update(org: Organization, user: User, resource: EntraUser) -> EntraUser:
    email = _user_name(org, resource.user_name)
    taken = _taken(org, user, email if email != user_email(user) else None, resource.external_id)
    if taken:
        raise scim.UniquenessException(detail=f"{taken} is taken.")
    _check_active(org, user, resource.active, "scim_user_updated")
    before = (user.email_hmac, user.scim_external_id_hmac, user.scim_data_enc and _kept(org, user))
    if email != user_email(user):
        set_email(user, email)
    kept = _store(org, user, resource)
    if before != (user.email_hmac, user.scim_external_id_hmac, user.scim_data_enc and _kept(org, user)):
        record("scim_user_updated", "success", org=org, actor=PROVISIONING, detail=f"user {user.id}")
    _set_active(org, user, resource.active)
    return _as_stored(user, email, resource, kept)


def delete_user(org: Organization, scim_id: str) -> None:
    """DELETE /Users/{id}: removed as the USERS tab's Remove does (not a break-glass account, not the last admin)."""
    user = _user(org, scim_id)
    if user.break_glass:
        raise _refusal(scim.MutabilityException(detail="This is a break-glass account: provisioning never removes "
                                                       "it."), org, "user_removed", f"user {user.id} break_glass")
    if is_last_admin(user, org):
        raise _refusal(scim.MutabilityException(detail=LAST_ADMIN), org, "user_removed", f"user {user.id} last_admin")
    remove(org, user, PROVISIONING)


def merge_into(org: Organization, provisioned: User, user: User) -> bool:
    """Merge a provisioned user not yet linked into the organisation's user who is not provisioned: Entra's POST
    made a second account for someone who had signed in with Microsoft before provisioning was turned on (the
    portal held neither their email nor their alias). The user takes the SCIM id, externalId's index, the kept copy
    (re-sealed: it is bound to the row), the group memberships, a block (their sessions end) and, if they have
    none, the email; the provisioned row goes; one commit. Then the admin-group rule applies to them.

    False, both left alone (ids logged): a break-glass account; a provisioned account with a password (an adopted
    account, not one provisioning made); a block of the organisation's last admin."""
    if user.break_glass or provisioned.password_hash or (provisioned.blocked and is_last_admin(user, org)):
        log.warning("Provisioned user %s not merged into user %s of organisation %s (break-glass, password or "
                    "last admin)", provisioned.id, user.id, org.id)
        return False
    data = provisioned.scim_data_enc and sealed.open_sealed("scim", provisioned, provisioned.scim_data_enc)
    email = None if user.email_enc else user_email(provisioned)
    scim_id, external_id, blocked, gone = (provisioned.scim_id, provisioned.scim_external_id_hmac,
                                           provisioned.blocked, provisioned.id)
    # The user is not provisioned, so a member of no group: the memberships move as they are.
    groups = set(db.session.execute(db.update(ScimGroupMember).where(ScimGroupMember.user_id == gone)
                                    .values(user_id=user.id).returning(ScimGroupMember.group_id)
                                    .execution_options(synchronize_session=False)).scalars())
    erase(provisioned)
    db.session.expunge(provisioned)
    user.scim_id, user.scim_external_id_hmac = scim_id, external_id
    user.scim_data_enc = sealed.seal("scim", user, data) if data else None
    if email:
        set_email(user, email)
    record("identity_linked", "success", org=org, actor=user, detail="provisioned_user_merged")
    log.info("Provisioned user %s merged into user %s of organisation %s", gone, user.id, org.id)
    if blocked and not user.blocked:
        set_blocked(org, user, True, PROVISIONING)  # commits the merge with the block
    else:
        db.session.commit()
    if org.scim_admin_group_id in groups:
        _promote(org, user)
    return True


def find_users(org: Organization, filter: str | None, start_index: int = 1, count: int | None = None
               ) -> tuple[int, list[EntraUser]]:
    """GET /Users: the total and one page of the users the filter selects (supported filters only)."""
    params: dict = {"org_id": org.id}
    attribute = None
    if filter:
        attribute, value = _lookup(filter, entra_user(), {"username", "externalid", "emails.value"})
        if attribute == "externalid":
            params["hmacs"] = _external_ids(value)
        else:  # userName, or emails[type eq "work"].value: the user's email
            try:
                email = normalise_email(value)
            except InvalidInput:
                return 0, []
            attribute, params["hmacs"] = "email", vault.get_vault().blind_indexes(email)
    return _page(_USERS[attribute], params, User.id, start_index, count, lambda u: user_resource(org, u))


# -- filters and pages ----------------------------------------------------------------------------------------------

def _lookup(text: str, model: type, allowed: set[str]) -> tuple[str, str]:
    """The one equality a supported filter asks for, as (attribute, value); anything else is invalidFilter."""
    from scim2_models.path import CompareOperator, Comparison, LogicalExpr, LogicalOperator, ValuePath
    ast = scim.ScimFilter[model](text).ast  # bad syntax: InvalidFilterException
    found: tuple[str, object] | None = None
    if (isinstance(ast, Comparison) and ast.op == CompareOperator.eq and ast.attr_path.sub_attr is None
            and ast.attr_path.uri in (None, str(model.__schema__))):
        found = (ast.attr_path.attr.casefold(), ast.value)
    elif (isinstance(ast, ValuePath) and ast.sub_attr is None and ast.attr_path.attr.casefold() == "emails"
          and isinstance(ast.val_filter, LogicalExpr) and ast.val_filter.op == LogicalOperator.and_):
        terms = {(t.attr_path.attr.casefold(), t.op): t.value for t in ast.val_filter.terms
                 if isinstance(t, Comparison) and t.attr_path.sub_attr is None}
        if len(terms) == 2 and str(terms.get(("type", CompareOperator.eq), "")).casefold() == "work" and (
                "value", CompareOperator.eq) in terms:
            found = ("emails.value", terms[("value", CompareOperator.eq)])
    if found is None or found[0] not in allowed or not isinstance(found[1], str):
        kind = "Group" if model is scim.Group else "User"
        raise scim.InvalidFilterException(detail=f"Supported filters: {SUPPORTED_FILTERS[kind]}.")
    return found[0], found[1]


def _page(query, params: dict, key, start_index: int, count: int | None, show) -> tuple[int, list]:
    """RFC 7644 §3.4.2.4: startIndex below 1 is 1, a negative count 0; at most MAX_RESULTS a page. `query` is one of
    the statements above (_USERS, _GROUPS), `params` its parameters."""
    count = MAX_RESULTS if count is None else max(0, min(count, MAX_RESULTS))
    skipped = max(start_index, 1) - 1
    rows = list(db.session.execute(_paged(query, key), {**params, "skip": skipped, "count": count}).scalars()
                ) if count else []
    if count and len(rows) < count and (rows or not skipped):
        total = skipped + len(rows)  # the last page (a filter's look-up): the total without counting again
    else:
        total = db.session.scalar(_counted(query), params) or 0
    return total, [show(row) for row in rows]


@functools.cache
def _paged(query, key):
    """A page of `query` (one of the statements built once above), built once too."""
    return query.order_by(key).offset(bindparam("skip", type_=Integer)).limit(bindparam("count", type_=Integer))


@functools.cache
def _counted(query):
    return db.select(db.func.count()).select_from(query.subquery())


# -- groups -------------------------------------------------------------------------------------------------------

def _scim_group(org: Organization, scim_id: str) -> ScimGroup:
    group = db.session.execute(_GROUP_BY_SCIM_ID, {"scim_id": scim_id}).scalar_one_or_none()
    if group is None or group.organization_id != org.id:
        raise scim.NotFoundException(detail="No such group.")
    return group


def group_resource(org: Organization, group: ScimGroup, *, members: bool = True) -> scim.Group:
    body = {"schemas": [str(scim.Group.__schema__)], "id": group.scim_id, "displayName": group_name(group)}
    if members:
        ids = db.session.execute(db.select(User.scim_id).join(ScimGroupMember, ScimGroupMember.user_id == User.id)
                                 .where(ScimGroupMember.group_id == group.id).order_by(User.id)).scalars()
        body["members"] = [{"value": i, "type": "User"} for i in ids]
    resource = scim.Group.model_validate(body)
    resource.meta = scim.Meta(resource_type="Group", created=_utc(group.created_at), last_modified=_utc(group.created_at))
    return resource


def _group_name(resource: scim.Group) -> str:
    name = (resource.display_name or "").strip()
    if not name or len(name) > 256:
        raise scim.InvalidValueException(detail="displayName is 1 to 256 characters.")
    return name


def _group_taken(org: Organization, group: ScimGroup | None, name: str | None, external_id: str | None) -> str | None:
    others = db.select(ScimGroup.id).where(ScimGroup.organization_id == org.id)
    if group is not None and group.id is not None:
        others = others.where(ScimGroup.id != group.id)
    if name is not None and db.session.execute(
            others.where(ScimGroup.name_hmac.in_(sealed.blind_indexes("group_name", name))).limit(1)).first():
        return "displayName"
    if external_id and db.session.execute(
            others.where(ScimGroup.external_id_hmac.in_(_external_ids(external_id))).limit(1)).first():
        return "externalId"
    return None


def _member_ids(org: Organization, values: object) -> set[int]:
    """The row ids of the provisioned users a members value names ([{"value": scim_id}, ...]); an id that is not
    one of the organisation's provisioned users is invalidValue (the same for another organisation's)."""
    items = values if isinstance(values, list) else [values]
    wanted = set()
    for item in items:
        value = item.get("value") if isinstance(item, dict) else getattr(item, "value", None)
        if not isinstance(value, str) or not value:
            raise scim.InvalidValueException(detail="A member is {\"value\": \"<a user's id>\"}.")
        wanted.add(value)
    found: dict[str, int] = {}
    chunk = sorted(wanted)
    for start in range(0, len(chunk), 500):
        found.update(db.session.execute(db.select(User.scim_id, User.id).where(
            User.organization_id == org.id, User.scim_id.in_(chunk[start:start + 500]))).all())
    if len(found) != len(wanted):
        raise scim.InvalidValueException(detail="A member is not one of the provisioned users.")
    return set(found.values())


def _current_members(group: ScimGroup) -> set[int]:
    return set(db.session.execute(db.select(ScimGroupMember.user_id).where(ScimGroupMember.group_id == group.id))
               .scalars())


def _write_group(org: Organization, group: ScimGroup, name: str, external_id: str | None,
                 members: set[int] | None, action: str) -> None:
    """Store the group's name, externalId and (if given) members, audit, commit, then apply the admin-group rule."""
    if group.id is None:
        group.name_hmac, group.name_enc = b"", b""
        db.session.add(group)
        db.session.flush()
    changed = action == "scim_group_created"
    if group.name_enc == b"" or group_name(group) != name:
        sealed.store("group_name", group, group, name)
        changed = True
    if external_id and group.external_id_hmac not in _external_ids(external_id):
        group.external_id_hmac, changed = vault.get_vault().blind_index(external_id), True
    elif not external_id and group.external_id_hmac is not None:
        group.external_id_hmac, changed = None, True
    added: set[int] = set()
    removed: set[int] = set()
    if members is not None:
        had = _current_members(group)
        added, removed = members - had, had - members
        if removed:
            db.session.execute(db.delete(ScimGroupMember).where(ScimGroupMember.group_id == group.id,
                                                                 ScimGroupMember.user_id.in_(removed)))
        db.session.add_all(ScimGroupMember(group_id=group.id, user_id=u) for u in sorted(added))
    if changed or added or removed:
        detail = f"group {group.scim_id}" + (f" added={len(added)}" if added else "") + (
            f" removed={len(removed)}" if removed else "")
        record(action, "success", org=org, actor=PROVISIONING, detail=detail)
    db.session.commit()
    if org.scim_admin_group_id == group.id:
        for user in db.session.execute(db.select(User).where(User.id.in_(added)).order_by(User.id)).scalars():
            _promote(org, user)
        for user in db.session.execute(db.select(User).where(User.id.in_(removed)).order_by(User.id)).scalars():
            _demote(org, user)


def create_group(org: Organization, resource: scim.Group) -> scim.Group:
    """POST /Groups (Entra sends no members; any given must be provisioned users of the organisation)."""
    name = _group_name(resource)
    taken = _group_taken(org, None, name, resource.external_id)
    if taken:
        raise scim.UniquenessException(detail=f"{taken} is taken.")
    members = _member_ids(org, resource.members or [])
    group = ScimGroup(organization_id=org.id, scim_id=secrets.token_urlsafe(16))
    _write_group(org, group, name, resource.external_id, members, "scim_group_created")
    log.info("Provisioned group %s in organisation %s", group.id, org.id)
    return group_resource(org, group)


def get_group(org: Organization, scim_id: str, *, members: bool = True) -> scim.Group:
    return group_resource(org, _scim_group(org, scim_id), members=members)


def find_groups(org: Organization, filter: str | None, start_index: int = 1, count: int | None = None,
                *, members: bool = True) -> tuple[int, list[scim.Group]]:
    """GET /Groups: the total and one page of the groups the filter selects (displayName or externalId eq)."""
    params: dict = {"org_id": org.id}
    attribute = None
    if filter:
        attribute, value = _lookup(filter, scim.Group, {"displayname", "externalid"})
        params["hmacs"] = (sealed.blind_indexes("group_name", value) if attribute == "displayname"
                           else _external_ids(value))
    return _page(_GROUPS[attribute], params, ScimGroup.id, start_index, count,
                 lambda g: group_resource(org, g, members=members))


def replace_group(org: Organization, scim_id: str, resource: scim.Group) -> scim.Group:
    """PUT /Groups/{id}: name, externalId and the whole member list."""
    group = _scim_group(org, scim_id)
    name = _group_name(resource)
    taken = _group_taken(org, group, name, resource.external_id)
    if taken:
        raise scim.UniquenessException(detail=f"{taken} is taken.")
    _write_group(org, group, name, resource.external_id, _member_ids(org, resource.members or []),
                 "scim_group_updated")
    return group_resource(org, group)


def patch_group(org: Organization, scim_id: str, patch: scim.PatchOp) -> None:
    """PATCH /Groups/{id}: members added and removed by id (hundreds at once, without reading the group's other
    members into a resource), other attributes through the library's PATCH."""
    from scim2_models.path import AttrPath, CompareOperator, Comparison, ValuePath
    group = _scim_group(org, scim_id)
    members = _current_members(group)
    rest = []
    for operation in patch.operations or []:
        path = operation.path.ast if operation.path is not None else None
        op = str(operation.op.value if hasattr(operation.op, "value") else operation.op).lower()
        if isinstance(path, AttrPath) and path.attr.casefold() == "members" and path.sub_attr is None:
            if op == "add":
                members |= _member_ids(org, operation.value)
            elif op == "replace":
                members = _member_ids(org, operation.value or [])
            elif operation.value is None:
                members = set()
            else:
                members -= _member_ids(org, operation.value)
        elif (isinstance(path, ValuePath) and path.attr_path.attr.casefold() == "members" and op == "remove"
              and isinstance(path.val_filter, Comparison) and path.val_filter.op == CompareOperator.eq
              and path.val_filter.attr_path.attr.casefold() == "value" and path.sub_attr is None):
            members -= _member_ids(org, [{"value": path.val_filter.value}])
        elif path is None and op in ("add", "replace") and isinstance(operation.value, dict) and any(
                k.casefold() == "members" for k in operation.value):
            raise scim.InvalidPathException(detail="Change members with \"path\": \"members\".")
        else:
            rest.append(operation)
    resource = group_resource(org, group, members=False)
    if rest:
        specialised(scim.PatchOp, scim.Group)(operations=rest).patch(resource)
    name = _group_name(resource)
    taken = _group_taken(org, group, name, resource.external_id)
    if taken:
        raise scim.UniquenessException(detail=f"{taken} is taken.")
    _write_group(org, group, name, resource.external_id, members, "scim_group_updated")


def delete_group(org: Organization, scim_id: str) -> None:
    """DELETE /Groups/{id}: the group and its memberships; if it was the admin group, no group is (roles stay)."""
    group = _scim_group(org, scim_id)
    delete_groups(org, [group.id])
    record("scim_group_deleted", "success", org=org, actor=PROVISIONING, detail=f"group {scim_id}")
    db.session.commit()

