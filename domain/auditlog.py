"""Reading the audit log: the AUDIT LOG tab's pages, the CLI's export, and the words both show."""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterable

from domain.addresses import page_number
from domain.directory import display_user
from domain.policy import OPERATOR_NAME, PROVISIONING_NAME, Actor, require_admin
from models import AuditEvent, Organization, db

AUDIT_PAGE_SIZE = 25
# How the AUDIT LOG tab names actions; unknown codes are shown as they are.
AUDIT_ACTIONS = {
    "sign_in": "Sign-in", "sso_activate": "SSO activated", "sso_deactivate": "SSO deactivated",
    "tenant_bound": "Tenant bound", "identity_linked": "Microsoft account linked", "user_created": "User created",
    "admin_consent": "Admin consent", "require_sso": "Require single sign-on",
    "profile_stored": "Profile copy stored", "profile_deleted": "Profile copy deleted",
    "org_created": "Organisation created", "org_renamed": "Organisation renamed", "domain_added": "Domain added",
    "domain_removed": "Domain removed", "password_reset": "Password reset", "org_deleted": "Organisation deleted",
    "profiles_purged": "All profile copies deleted", "store_profiles": "Stored profiles setting",
    "data_export": "Data downloaded", "role_changed": "Role changed", "user_blocked": "User blocked",
    "user_unblocked": "User unblocked", "signed_out_everywhere": "Signed out everywhere", "user_removed": "User removed",
    "admins_from_entra": "Admins assigned in Microsoft Entra",
    "scim_token_generated": "Provisioning token generated", "scim_token_rotated": "Provisioning token rotated",
    "scim_turned_off": "User provisioning turned off", "scim_admin_group": "Admin group (provisioning) set",
    "scim_user_created": "User provisioned", "scim_user_updated": "Provisioned user updated",
    "scim_group_created": "Group provisioned", "scim_group_updated": "Provisioned group updated",
    "scim_group_deleted": "Provisioned group deleted",
}
# The audit page's words for the fixed detail codes (the CLI's JSON keeps the codes).
AUDIT_DETAILS = {
    "password": "with a password", "sso": "with Microsoft", "bad_password": "wrong email or password",
    "sso_required": "single sign-on is required", "sso_not_active": "single sign-on is off",
    "settings": "in Settings", "cli": "by the operator (CLI)", "blocked": "the account is blocked",
    "provisioned_object_id": "provisioned user, matched by object id",
    "provisioned_mail_nickname": "provisioned user, matched by mail alias (mailNickname)",
    "provisioned_not_matched": "the provisioned account could not be matched",
    "provisioned_ambiguous": "several provisioned accounts matched",
    "provisioned_user_merged": "the account provisioned for them merged into theirs",
}
AUDIT_OUTCOMES = {"success": "Succeeded", "failure": "Failed"}


@dataclass(frozen=True)
class AuditEntry:
    """One audit event as pages and the CLI show it."""

    time: datetime
    actor: str | None
    action: str
    outcome: str
    detail: str
    ip: str | None

    @property
    def label(self) -> str:
        return AUDIT_ACTIONS.get(self.action, self.action.replace("_", " ").capitalize())

    @property
    def detail_label(self) -> str:
        """The detail in words: known codes from AUDIT_DETAILS, Microsoft's AADSTS codes and other codes spelled out."""
        detail = self.detail
        if detail in AUDIT_DETAILS:
            return AUDIT_DETAILS[detail]
        if detail.startswith("entra_"):
            return "Microsoft error " + detail[len("entra_"):]
        if re.fullmatch(r"[a-z]+(_[a-z]+)+", detail):
            return detail.replace("_", " ")
        if re.fullmatch(r"(?:[A-Z][a-z]+){2,}", detail):  # an error class's name, e.g. NotAllowed
            return " ".join(re.findall(r"[A-Z][a-z]+", detail)).capitalize()
        return detail

    @property
    def outcome_label(self) -> str:
        return AUDIT_OUTCOMES.get(self.outcome, self.outcome)

    def as_json(self) -> dict[str, Any]:
        return {"time": self.time.strftime("%Y-%m-%dT%H:%M:%SZ"), "actor": self.actor, "action": self.action,
                "outcome": self.outcome, "detail": self.detail, "ip": self.ip}


@dataclass(frozen=True)
class AuditPage:
    entries: list[AuditEntry]
    page: int
    pages: int
    total: int


def _audit_entries(events: Iterable[AuditEvent]) -> Iterable[AuditEntry]:
    names: dict[int, str] = {}  # decrypt each actor's email once
    for entry in events:
        actor = OPERATOR_NAME if entry.by_operator else PROVISIONING_NAME if entry.by_provisioning else None
        if entry.actor_id is not None and entry.actor is not None:
            if entry.actor_id not in names:
                names[entry.actor_id] = display_user(entry.actor)
            actor = names[entry.actor_id]
        yield AuditEntry(time=entry.at, actor=actor, action=entry.action, outcome=entry.outcome,
                         detail=entry.detail, ip=entry.ip)


def audit_page(org: Organization, page: str | int, actor: Actor) -> AuditPage:
    """One page of the organisation's audit log, newest first; a page that does not exist is a 404."""
    require_admin(actor, org, "reading the audit log")
    total = db.session.scalar(db.select(db.func.count()).select_from(AuditEvent)
                              .where(AuditEvent.organization_id == org.id)) or 0
    number, pages = page_number(page, total, AUDIT_PAGE_SIZE, "The audit log")
    events = db.session.execute(db.select(AuditEvent).where(AuditEvent.organization_id == org.id)
                                .order_by(AuditEvent.id.desc())
                                .offset((number - 1) * AUDIT_PAGE_SIZE).limit(AUDIT_PAGE_SIZE)).scalars()
    return AuditPage(entries=list(_audit_entries(events)), page=number, pages=pages, total=total)


def audit_log(org: Organization, actor: Actor) -> Iterable[AuditEntry]:
    """The organisation's whole audit log, oldest first, streamed in batches (for the CLI)."""
    require_admin(actor, org, "reading the audit log")
    events = db.session.execute(db.select(AuditEvent).where(AuditEvent.organization_id == org.id)
                                .order_by(AuditEvent.id).execution_options(yield_per=500)).scalars()
    return _audit_entries(events)
