"""Stored profiles: the copy read from Microsoft at sign-in, the organisation's "store a copy" setting, a user's
export and deletion of their data, and the admin purge."""
from __future__ import annotations

import base64
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, select

import entra
import vault
from domain import sealed
from domain.addresses import normalise_or_raw, org_emails
from domain.audit import record
from domain.policy import Actor, require_admin
from models import AuditEvent, LoginSession, Organization, SessionUser, StoredProfile, User, db, utcnow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProfileCopy:
    claims: dict[str, Any]
    read_at: datetime
    has_photo: bool
    kept: bool
    tenant_id: str | None
    object_id: str | None


def store_profile(user: User, result: entra.SignIn, sid_hash: str | None) -> None:
    """Keep the profile read at sign-in, encrypted; only for this session when the organisation keeps no copy."""
    if user.id is None:
        db.session.flush()
    row = db.session.get(StoredProfile, user.id) or StoredProfile(user_id=user.id)
    row.data_enc = sealed.seal("profile", user, result.profile)
    row.photo_enc = sealed.seal("photo", user, result.photo) if result.photo else None
    row.read_at = utcnow()
    row.kept = bool(user.organization.store_profiles)
    row.session_id = None if row.kept else sid_hash
    db.session.add(row)
    _keep_or_forget_email(user, result, row.kept)


# The profile page's read: the columns it shows, without the photo blob, and no ORM object to build (run on the
# session's connection: Session.execute's bookkeeping costs more than the query).
_profiles = StoredProfile.__table__
_PROFILE_COPY = (select(_profiles.c.data_enc, _profiles.c.read_at, _profiles.c.kept,
                        _profiles.c.photo_enc.is_not(None).label("has_photo"))
                 .where(_profiles.c.user_id == bindparam("user_id")))
_PROFILE_PHOTO = select(_profiles.c.photo_enc).where(_profiles.c.user_id == bindparam("user_id"))


def profile_of(user: User | SessionUser) -> ProfileCopy | None:
    row = db.session.connection().execute(_PROFILE_COPY, {"user_id": user.id}).first()
    if row is None:
        return None
    claims = sealed.open_sealed("profile", user, row.data_enc)
    return ProfileCopy(claims=claims, read_at=row.read_at, has_photo=row.has_photo, kept=row.kept,
                       tenant_id=user.tenant_id, object_id=user.object_id)


def photo_of(user: User | SessionUser) -> tuple[bytes, str] | None:
    blob = db.session.execute(_PROFILE_PHOTO, {"user_id": user.id}).scalar()
    if blob is None:
        return None
    data = sealed.open_sealed("photo", user, blob)
    kind = entra.photo_type(data)
    # The same cap as when it was read: a bigger blob was not written by us.
    return (data, kind) if kind and len(data) <= entra.MAX_PHOTO else None


def _microsoft_only(user: User) -> bool:
    """An account that exists only through Microsoft: no password, so its email is Microsoft's data too. A
    provisioned user's email is their userName, given by provisioning like an admin gives a password account's."""
    return user.password_hash is None and user.object_id is not None and user.scim_id is None


def _keep_or_forget_email(user: User, result: entra.SignIn, kept: bool) -> None:
    """Keep a Microsoft-only user's verified email (in the organisation's domains) only where the organisation
    keeps copies; else it lives in the session's profile copy and goes with it. Graph's `mail` is anyone's
    to set, so it is profile data only: never stored here, shown as the user or indexed."""
    if not _microsoft_only(user):
        return  # a password account's email is its sign-in name, given by an admin
    verified = org_emails(user.organization, result)
    if not kept or not verified:
        user.email_enc, user.email_hmac = b"", b""
    elif user.email_hmac != vault.get_vault().blind_index(verified[0]):
        sealed.store("email", user, user, verified[0])


def email_from_copy(user: User | SessionUser) -> str:
    """A session-only copy's UPN when it is in the organisation's domains (organisations that keep no copies)."""
    copy = profile_of(user)
    if copy is None or copy.kept:
        return ""
    upn = normalise_or_raw(str(copy.claims.get("userPrincipalName") or ""))
    return upn if upn.rpartition("@")[2] in {d.name for d in user.organization.domains} else ""


def scrub_deleted() -> None:
    """SQLite in WAL mode keeps old page versions in the -wal file: checkpoint it away after deleting personal data."""
    if db.engine.dialect.name == "sqlite":
        db.session.execute(db.text("PRAGMA wal_checkpoint(TRUNCATE)"))
        db.session.commit()


def _forget_copies(user_ids: Any, *, kept_only: bool) -> int:
    """Delete the profile copies (and Microsoft-only emails) of the users `user_ids` selects; return copies deleted."""
    query = db.delete(StoredProfile).where(StoredProfile.user_id.in_(user_ids))
    if kept_only:
        query = query.where(StoredProfile.kept.is_(True))
    deleted = db.session.execute(query, execution_options={"synchronize_session": False}).rowcount
    db.session.execute(
        db.update(User).where(User.id.in_(user_ids), User.password_hash.is_(None), User.object_id.is_not(None),
                              User.scim_id.is_(None))
        .values(email_enc=b"", email_hmac=b""), execution_options={"synchronize_session": False})
    # What provisioning (SCIM) sent goes too; the externalId's index stays (it links the user at sign-in).
    db.session.execute(db.update(User).where(User.id.in_(user_ids), User.scim_data_enc.is_not(None))
                       .values(scim_data_enc=None), execution_options={"synchronize_session": False})
    db.session.expire_all()  # the bulk statements bypassed objects already loaded
    return deleted or 0


def set_store_profiles(org: Organization, keep: bool, actor: Actor) -> int:
    """Change "Store an encrypted copy of user profiles"; turning it off deletes the stored copies now."""
    require_admin(actor, org, "the stored profiles setting")
    if bool(org.store_profiles) == keep:
        return 0
    org.store_profiles = keep
    deleted = 0
    if not keep:
        # Copies held for live sessions stay until those sessions end, as the setting promises.
        deleted = _forget_copies(db.select(User.id).where(User.organization_id == org.id), kept_only=True)
    record("store_profiles", "success", org=org, actor=actor,
           detail=f"{'on' if keep else 'off'}; deleted {deleted}")
    db.session.commit()
    scrub_deleted()
    log.info("Organisation %s: store_profiles %s, %d copies deleted", org.id, keep, deleted)
    return deleted


def purge_profile_copies(org: Organization, actor: Actor) -> int:
    """An admin deletes every profile copy of the organisation; return how many were deleted."""
    require_admin(actor, org, "the profile purge")
    deleted = _forget_copies(db.select(User.id).where(User.organization_id == org.id), kept_only=False)
    record("profiles_purged", "success", org=org, actor=actor, detail=f"deleted {deleted}")
    db.session.commit()
    scrub_deleted()
    return deleted


def delete_stored_copy(user: User) -> bool:
    """A user deletes their own profile copy and photo; return whether there was one."""
    deleted = _forget_copies(db.select(User.id).where(User.id == user.id), kept_only=False)
    record("profile_deleted", "success", org=user.organization, actor=user, detail="by the user")
    db.session.commit()
    scrub_deleted()
    return bool(deleted)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() + "Z" if value is not None else None


def export_user_data(user: User) -> dict[str, Any]:
    """Everything the portal stores about `user`, decrypted, for "Download my data" (the export is audited)."""
    email = sealed.open_sealed("email", user, user.email_enc).decode() if user.email_enc else None
    profile = None
    row = db.session.get(StoredProfile, user.id)
    if row is not None:
        photo = sealed.open_sealed("photo", user, row.photo_enc) if row.photo_enc else None
        profile = {
            "read_from_microsoft_at": _iso(row.read_at),
            "kept_after_sign_out": row.kept,
            "claims": sealed.open_sealed("profile", user, row.data_enc),
            "photo": None if photo is None else {"content_type": entra.photo_type(photo),
                                                 "base64": base64.b64encode(photo).decode("ascii")},
        }
    record("data_export", "success", org=user.organization, actor=user)  # only once everything decrypted
    db.session.commit()
    sessions = db.session.execute(db.select(LoginSession).where(LoginSession.user_id == user.id)
                                  .order_by(LoginSession.created_at)).scalars()
    events = db.session.execute(db.select(AuditEvent).where(AuditEvent.actor_id == user.id)
                                .order_by(AuditEvent.id)).scalars()
    return {
        "exported_at": _iso(utcnow()),
        "account": {
            "organisation": user.organization.name, "role": user.role, "email": email,
            "has_password": user.password_hash is not None, "break_glass": user.break_glass,
            "tenant_id": user.tenant_id, "object_id": user.object_id,
            "created_at": _iso(user.created_at), "last_sign_in_at": _iso(user.last_sign_in_at),
        },
        "stored_profile": profile,
        "sessions": [{"method": s.method, "started_at": _iso(s.created_at), "last_seen_at": _iso(s.last_seen_at)}
                     for s in sessions],
        "audit_events": [{"at": _iso(e.at), "action": e.action, "outcome": e.outcome, "detail": e.detail,
                          "ip": e.ip} for e in events],
    }
