"""Admin consent for the organisation's tenant, and "Require single sign-on" (SSO enforcement)."""
from __future__ import annotations

import logging
import secrets
from typing import Any

import entra
from domain.audit import failures_recorded, record
from domain.errors import FlowFinished, InvalidInput, NotAllowed, refused
from domain.policy import require_admin
from domain.sessions import State, put_pending, take_pending
from models import LoginSession, Organization, User, db, utcnow

log = logging.getLogger(__name__)



def begin_admin_consent(org: Organization, actor: User, state: State) -> str:
    """Keep a single-use state bound to the organisation, its tenant and the admin; return Entra's admin-consent URL."""
    require_admin(actor, org, "admin consent")
    if not org.sso_active or not org.tenant_id:
        raise InvalidInput("Activate single sign-on first: admin consent is granted for the Microsoft tenant "
                           f"{org.name} is bound to.", status=409, title="Single sign-on is off")
    key = secrets.token_urlsafe(32)
    url = entra.client().admin_consent_url(org.tenant_id, key)
    put_pending(state, "admin_consents", key, {"org_id": org.id, "tenant_id": org.tenant_id, "actor_id": actor.id})
    return url


def take_admin_consent(state: State, states: list[str]) -> dict[str, Any]:
    """Remove and return the admin-consent request a callback's state names: single use, 10 minutes, this browser."""
    try:
        return take_pending(
            state, "admin_consents", states,
            unknown="This admin-consent answer was not asked for in this browser, or was used already. "
                    "Nothing was recorded. Start again from Settings → SECURITY.",
            expired="This admin-consent request took longer than 10 minutes and expired. Nothing was "
                    "recorded. Start again from Settings → SECURITY.")
    except InvalidInput as e:
        log.warning("Admin-consent callback with %s state",
                    "a missing, unknown or used" if isinstance(e, FlowFinished) else "an expired")
        raise


def complete_admin_consent(pending: dict[str, Any], params: dict[str, str], actor: User | None) -> Organization:
    """Record tenant-wide consent if Entra confirms it for the bound tenant; otherwise record the failure only."""
    org = db.session.get(Organization, pending.get("org_id") or 0)
    if actor is None or actor.id != pending.get("actor_id"):
        log.warning("Admin-consent callback for user %s finished by user %s", pending.get("actor_id"),
                    actor.id if actor is not None else "anonymous")
        raise NotAllowed("Only the administrator who asked for admin consent can finish it. Nothing was recorded.")
    require_admin(actor, org, "admin consent")
    with failures_recorded("admin_consent", org, actor):
        if not org.sso_active or org.tenant_id != pending.get("tenant_id"):
            raise refused("tenant_changed", "Single sign-on was turned off or bound to another tenant meanwhile. "
                          "Nothing was recorded. Start again from Settings → SECURITY.", title="Start again")
        answer = entra.parse_admin_consent(params)  # Entra's error first: it sends admin_consent=True on errors too
        if answer.tenant_hint != org.tenant_id:
            # The tenant parameter is unsigned: it may only confirm the tenant we sent the admin to.
            raise refused("tenant_mismatch", f"Microsoft's answer is not for the tenant {org.name} is bound to, "
                          "so nothing was recorded.", title="Different tenant")
    org.admin_consent_at = utcnow()
    org.admin_consent_by_id = actor.id
    record("admin_consent", "success", org=org, actor=actor, detail=org.tenant_id or "")
    db.session.commit()
    return org


def set_require_sso(org: Organization, actor: User, required: bool, *, keep_sid_hash: str | None = None) -> bool:
    """Turn SSO enforcement on or off; on needs SSO active and ends the non-break-glass password sessions of the
    organisation except the one `keep_sid_hash` names (the admin's own)."""
    require_admin(actor, org, "SSO enforcement")
    if required and not org.sso_active:
        record("require_sso", "failure", org=org, actor=actor, detail="sso_not_active")
        db.session.commit()
        raise InvalidInput("Activate single sign-on first: requiring it while it is off would lock members out.",
                           status=409, title="Single sign-on is off")
    if org.require_sso == required:
        return False
    org.require_sso = required
    detail = "on" if required else "off"
    if required:
        # A password session started before enforcement would otherwise outlive it by hours.
        users = db.select(User.id).where(User.organization_id == org.id, User.break_glass.is_(False))
        query = db.delete(LoginSession).where(LoginSession.user_id.in_(users), LoginSession.method == "password")
        if keep_sid_hash is not None:
            query = query.where(LoginSession.id != keep_sid_hash)
        ended = db.session.execute(query).rowcount
        detail += f" password_sessions_ended={ended}"
    record("require_sso", "success", org=org, actor=actor, detail=detail)
    db.session.commit()
    return True


def break_glass_count(org: Organization) -> int:
    """Accounts of the organisation that may still use a password while SSO is required."""
    return db.session.scalar(db.select(db.func.count()).select_from(User).where(
        User.organization_id == org.id, User.break_glass.is_(True), User.password_hash.is_not(None))) or 0
