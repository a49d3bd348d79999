"""Database models (SQLAlchemy 2 style). Personal data is stored only as vault ciphertext."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from flask_login import UserMixin
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import Float, ForeignKey, Index, Integer, LargeBinary, String, Text, UniqueConstraint, false, func, inspect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)


def utcnow() -> datetime:
    """Naive UTC: SQLite has no time zones, so every stored time is UTC by convention."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Organization(db.Model):
    __tablename__ = "organizations"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The Entra tenant this organisation is bound to (set by the first successful activation).
    tenant_id: Mapped[str | None] = mapped_column(String(36), unique=True)
    sso_active: Mapped[bool] = mapped_column(default=False)
    sso_activated_at: Mapped[datetime | None]
    sso_activated_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", use_alter=True, ondelete="SET NULL"))
    store_profiles: Mapped[bool] = mapped_column(default=True)
    require_sso: Mapped[bool] = mapped_column(default=False)
    admin_consent_at: Mapped[datetime | None]
    admin_consent_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", use_alter=True, ondelete="SET NULL"))
    # "Admins are assigned in Microsoft Entra": the ID token's `roles` decide the role of SSO users at sign-in.
    admins_from_entra: Mapped[bool] = mapped_column(default=False, server_default=false())
    # User provisioning (SCIM): SHA-256 of the bearer token Entra sends (hex; the token is shown once, never
    # stored), when it was made, and when Entra last called (written at most once a minute).
    scim_token_hash: Mapped[str | None] = mapped_column(String(64))
    scim_token_created_at: Mapped[datetime | None]
    scim_last_call_at: Mapped[datetime | None]
    # "Members of this group are admins": one provisioned group, or none (cleared by whoever deletes the group).
    scim_admin_group_id: Mapped[int | None] = mapped_column(ForeignKey("scim_groups.id", use_alter=True))

    domains: Mapped[list[Domain]] = relationship(back_populates="organization", order_by="Domain.name")
    sso_activated_by: Mapped[User | None] = relationship(foreign_keys=[sso_activated_by_id])
    admin_consent_by: Mapped[User | None] = relationship(foreign_keys=[admin_consent_by_id])


Index("uq_organizations_scim_token_hash", Organization.scim_token_hash, unique=True)
# Names are unique without regard to case (`Acme` and `acme` cannot both exist). SQLite's lower() folds ASCII
# only, so domain/directory.py also compares case-folded names; this index holds even for writes that bypass it.
Index("uq_organizations_name_lower", func.lower(Organization.name), unique=True)


class Domain(db.Model):
    __tablename__ = "domains"

    id: Mapped[int] = mapped_column(primary_key=True)
    # Normalised: lower case, IDNA A-label, no trailing dot.
    name: Mapped[str] = mapped_column(String(253), unique=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)

    organization: Mapped[Organization] = relationship(back_populates="domains")


class User(UserMixin, db.Model):
    __tablename__ = "users"
    __table_args__ = (UniqueConstraint("tenant_id", "object_id", name="uq_users_tid_oid"),
                      # The USERS tab: an organisation's users, newest sign-in first, a page at a time.
                      Index("ix_users_org_last_sign_in", "organization_id", "last_sign_in_at", "id"),
                      Index("ix_users_org_scim_external_id", "organization_id", "scim_external_id_hmac"),
                      # An organisation's user by email (SCIM's userName): without it SQLite, lacking statistics,
                      # walks all of the organisation's users (ix_users_organization_id) for each look-up.
                      Index("ix_users_org_email", "organization_id", "email_hmac"),
                      Index("uq_users_scim_id", "scim_id", unique=True))

    id: Mapped[int] = mapped_column(primary_key=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    role: Mapped[str] = mapped_column(String(16), default="member")
    # Keyed HMAC of the normalised email (lookups) and the email itself, encrypted.
    email_hmac: Mapped[bytes] = mapped_column(LargeBinary(32), index=True)
    email_enc: Mapped[bytes] = mapped_column(LargeBinary)
    password_hash: Mapped[str | None] = mapped_column(String(255))
    break_glass: Mapped[bool] = mapped_column(default=False)
    # Entra identity: the only key for SSO users.
    tenant_id: Mapped[str | None] = mapped_column(String(36))
    object_id: Mapped[str | None] = mapped_column(String(36))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_sign_in_at: Mapped[datetime | None]
    # Blocked by an admin: no sign-in by any method, and no session survives the block.
    blocked: Mapped[bool] = mapped_column(default=False, server_default=false())
    # Provisioned by Entra (SCIM): the opaque id the endpoint gives out (never the row id), and a keyed HMAC of
    # `externalId` (look-ups, uniqueness; the value itself is in scim_data_enc). Linked to an Entra identity at
    # the first SSO sign-in whose `oid` has this externalId's HMAC.
    scim_id: Mapped[str | None] = mapped_column(String(32))
    scim_external_id_hmac: Mapped[bytes | None] = mapped_column(LargeBinary(32))
    # The SCIM attributes Entra sent that the portal keeps (sealed JSON); the identifiers and state only when
    # the organisation keeps no profile copies.
    scim_data_enc: Mapped[bytes | None] = mapped_column(LargeBinary)

    organization: Mapped[Organization] = relationship(foreign_keys=[organization_id])

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def get_id(self) -> str:
        """Flask-Login's id, from the row's identity when it has one: signing in right after the commit that
        expired the row then reads it again for nothing."""
        identity = inspect(self).identity
        return str(identity[0] if identity else self.id)


@dataclass(frozen=True, eq=False)
class SessionUser(UserMixin):
    """A signed-in user as the session check reads them (one Core row with the session, no ORM object): what pages
    show and who may see them. Services that change something take the `User` (blueprints/websession.user)."""

    id: int
    organization_id: int
    role: str
    email_enc: bytes
    tenant_id: str | None
    object_id: str | None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def organization(self) -> Organization:
        return db.session.get(Organization, self.organization_id)


class ScimGroup(db.Model):
    """A group Entra provisioned: its name sealed (a name can be personal: "Lena's team") and blind-indexed."""

    __tablename__ = "scim_groups"
    __table_args__ = (Index("ix_scim_groups_org_name", "organization_id", "name_hmac"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    scim_id: Mapped[str] = mapped_column(String(32), unique=True)
    name_hmac: Mapped[bytes] = mapped_column(LargeBinary(32))
    name_enc: Mapped[bytes] = mapped_column(LargeBinary)
    # Keyed HMAC of the group's externalId (Entra sends the group's object id), if any.
    external_id_hmac: Mapped[bytes | None] = mapped_column(LargeBinary(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ScimGroupMember(db.Model):
    __tablename__ = "scim_group_members"

    group_id: Mapped[int] = mapped_column(ForeignKey("scim_groups.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, index=True)


class LoginSession(db.Model):
    """A server-side record of a signed-in browser, so sign-out and expiry hold even for a copied cookie."""

    __tablename__ = "login_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    method: Mapped[str] = mapped_column(String(16))  # "password" or "sso"
    # Indexed for the sweep of expired sessions at every sign-in.
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    # SHA-256 of the ID token's `sid` (the Microsoft session it came from), for front-channel logout.
    entra_sid_hash: Mapped[str | None] = mapped_column(String(64), index=True)

    user: Mapped[User] = relationship()


class StoredProfile(db.Model):
    """The encrypted copy of a user's Entra profile and photo."""

    __tablename__ = "stored_profiles"
    # Session-only copies are found by session (sign-out, the sweep) without scanning the kept ones.
    __table_args__ = (Index("ix_stored_profiles_kept_session_id", "kept", "session_id"),)

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    data_enc: Mapped[bytes] = mapped_column(LargeBinary)
    photo_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    read_at: Mapped[datetime] = mapped_column(default=utcnow)
    # False: the organisation keeps no copy, so this row lives only as long as the session that read it.
    kept: Mapped[bool] = mapped_column(default=True)
    session_id: Mapped[str | None] = mapped_column(String(64))


class AuditEvent(db.Model):
    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    organization_id: Mapped[int | None] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    # True when the operator acted through the CLI (shown as "operator (CLI)"); actor_id is then empty.
    by_operator: Mapped[bool] = mapped_column(default=False, server_default=false())
    # True when Entra's provisioning service acted through the SCIM endpoint ("Microsoft Entra provisioning").
    by_provisioning: Mapped[bool] = mapped_column(default=False, server_default=false())
    action: Mapped[str] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(String(16))  # "success" or "failure"
    detail: Mapped[str] = mapped_column(Text, default="")  # a reason code or setting; never tokens or personal data
    ip: Mapped[str | None] = mapped_column(String(45))

    actor: Mapped[User | None] = relationship()


class VaultCheck(db.Model):
    """A value encrypted under the newest key, so a wrong key set is caught at start-up."""

    __tablename__ = "vault_check"

    id: Mapped[int] = mapped_column(primary_key=True)
    value: Mapped[bytes] = mapped_column(LargeBinary)


class SignInHit(db.Model):
    """One throttled sign-in request, counted by the sign-in throttles of every worker (see throttles.py).

    `key` names the limit and whom it counts (a keyed hash of a client address or of an account); a row is
    useless once `expires_at` (seconds since the epoch) has passed, and is swept with expired sessions.
    """

    __tablename__ = "sign_in_hits"
    __table_args__ = (Index("ix_sign_in_hits_key_at", "key", "at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(255))
    at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float, index=True)


class RateCount(db.Model):
    """A fixed-window rate limit's count (the SCIM endpoint's, per bearer token), shared by every worker: one row per
    limit and whom it counts, started afresh once `expires_at` (seconds since the epoch) has passed (throttles.py);
    swept with expired sessions."""

    __tablename__ = "rate_counts"

    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    count: Mapped[int] = mapped_column(Integer)
    expires_at: Mapped[float] = mapped_column(Float, index=True)
