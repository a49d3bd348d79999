"""Single sign-on with Microsoft: begin, complete, first-sign-in linking, activation and deactivation of SSO."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import entra
from domain import sealed
from domain.addresses import normalise_or_raw, org_emails
from domain.audit import failures_recorded, record
from domain.directory import Realm, user_email, users_by_email
from domain.errors import InvalidInput, NotAllowed, PortalError, refused
from domain.members import blocked_refusal, role_at_sign_in
from domain.policy import Actor, require_admin
from domain.profiles import store_profile
from domain.provisioning import merge_into
from domain.races import bind_tenant, lock_organization, settle_races
from domain.sessions import (State, current_sid_hash, end_sessions_for_entra_sid, put_pending, remember_finished,
                             start_session, take_pending)
from models import LoginSession, Organization, StoredProfile, User, db, utcnow

log = logging.getLogger(__name__)



def needs_consent_explanation(realm: Realm) -> bool:
    """Explain what is read before Microsoft until the organisation has admin consent.

    Decided by the organisation alone: asking whether the email already has an account would tell the login
    prompt's visitors which emails do. So members see it at each sign-in until admin consent is recorded.
    """
    org = realm.organization
    return org is not None and org.admin_consent_at is None


def begin_sso(purpose: str, *, org: Organization, login_hint: str | None, state: State, next_path: str = "/",
              actor: User | None = None) -> str:
    """Start a Microsoft sign-in for `purpose` ('sign_in' or 'activate'); keep the flow in `state`; return the URL
    to go to."""
    if purpose == "activate":
        require_admin(actor, org, "SSO activation")
    domain_hint = login_hint.rpartition("@")[2] if login_hint else None
    flow, auth_uri = entra.client().start_sign_in(login_hint=login_hint, domain_hint=domain_hint,
                                                  prompt="login" if purpose == "activate" else None)
    put_pending(state, "flows", flow["state"], {"flow": flow, "purpose": purpose, "org_id": org.id,
                                                "next": next_path, "actor_id": actor.id if actor else None})
    return auth_uri


def take_flow(state: State, states: list[str]) -> dict[str, Any]:
    """Remove and return the pending sign-in a callback's state names; it can be used once only."""
    return take_pending(
        state, "flows", states,
        malformed="This sign-in answer is not valid. Start the sign-in again.",
        unknown="This sign-in is finished or was started in another browser. Start the sign-in again.",
        expired="This sign-in took longer than 10 minutes and expired. Start it again.")


@dataclass(frozen=True)
class SsoOutcome:
    """A finished Microsoft sign-in: the user; for an activation by someone else's Microsoft account, that
    account's verified email (the tenant is bound, but the admin is not linked to it)."""
    user: User
    not_linked: str | None = None


def complete_sso(state: State, pending: dict[str, Any], params: dict[str, str],
                 actor: User | None = None) -> SsoOutcome:
    """Finish a Microsoft sign-in: validate, then sign the user in or activate SSO. Nothing is stored on failure."""
    purpose = pending.get("purpose")
    # No transaction is held while Microsoft is asked (its pooled connection serves other requests meanwhile), and
    # the organisation is read once, after: as it is then (an SSO deactivation made meanwhile counts).
    db.session.commit()
    try:
        result, failure = entra.client().finish_sign_in(pending["flow"], params), None
    except entra.EntraError as e:
        result, failure = None, e
    # With its domains, which the sign-in reads (org_emails): one statement.
    org = db.session.get(Organization, pending.get("org_id") or 0, options=[db.joinedload(Organization.domains)])
    with failures_recorded("sso_activate" if purpose == "activate" else "sign_in", org, actor):
        if org is None:
            raise InvalidInput("The organisation of this sign-in no longer exists.")
        if failure is not None:
            raise failure
        if purpose == "activate":
            outcome = settle_races(lambda: _activate_sso(org, result, actor, pending, state))
        else:
            outcome = SsoOutcome(settle_races(lambda: _sso_sign_in(org, result, state)))
        remember_finished(state, pending)
        return outcome


def _sso_sign_in(org: Organization, result: entra.SignIn, state: State) -> User:
    if not org.sso_active or org.tenant_id is None:
        raise NotAllowed("Single sign-on is not active for your organisation any more. Sign in with your password.")
    if result.tenant_id != org.tenant_id:
        raise NotAllowed("You signed in with a Microsoft account of another organisation. "
                         "Sign in again with your account of " + org.name + ".", title="Wrong organisation")
    user = _user_by_identity(result.tenant_id, result.object_id)
    if user is None:
        user = _link_or_create(org, result)
    elif user.organization_id != org.id:
        raise NotAllowed("Your Microsoft account belongs to another organisation in this portal.")
    elif user.scim_id is None and org.scim_token_hash is not None:
        _merge_provisioned(org, result, user)
    if user.blocked:
        raise blocked_refusal(org)  # rolled back and audited as `blocked` by failures_recorded
    role_at_sign_in(org, user, result.claims)
    user.last_sign_in_at = utcnow()
    entra_sid = result.claims.get("sid")
    sid_hash = start_session(user, "sso", state, entra_sid=entra_sid if isinstance(entra_sid, str) else None)
    store_profile(user, result, sid_hash)
    record("sign_in", "success", org=org, actor=user, detail="sso")
    db.session.commit()
    return user


def front_channel_logout(sid: str | None, iss: str | None) -> int:
    """Microsoft signed the user out: end the portal sessions of that Microsoft session (`sid`), only of the
    issuer's tenant when `iss` is given. An unknown or missing `sid`, or a foreign `iss`, changes nothing."""
    if not sid or len(sid) > 256:
        log.info("Front-channel logout without a usable sid: nothing ended")
        return 0
    tenant_id = None
    if iss is not None:
        tenant_id = entra.client().tenant_of_issuer(iss)
        if tenant_id is None:
            log.warning("Front-channel logout with an issuer not of the authority (%r): nothing ended", iss[:200])
            return 0
    ended = end_sessions_for_entra_sid(sid, tenant_id)
    log.info("Front-channel logout ended %d session(s)", ended)
    return ended


_USER_BY_IDENTITY = db.select(User).where(User.tenant_id == db.bindparam("tid"), User.object_id == db.bindparam("oid"))


def _user_by_identity(tid: str, oid: str) -> User | None:
    return db.session.execute(_USER_BY_IDENTITY, {"tid": tid, "oid": oid}).scalar_one_or_none()


def _provisioned_candidates(org: Organization, result: entra.SignIn) -> list[tuple[User, str]]:
    """The organisation's provisioned users not yet linked to a Microsoft sign-in whose externalId is this sign-in's
    object id or, failing that, its mail alias (Graph's mailNickname, Entra's default mapping), with which matched.
    Compared by blind index under every key, so a key rotation in progress does not hide anyone."""
    found: dict[int, tuple[User, str]] = {}
    for how, value in (("objectId", result.object_id), ("mailNickname", result.mail_nickname)):
        if not value:
            continue
        for user in db.session.execute(db.select(User).where(
                User.organization_id == org.id, User.object_id.is_(None), User.scim_id.is_not(None),
                User.scim_external_id_hmac.in_(sealed.blind_indexes("scim", {"externalId": value})))
                .order_by(User.id)).scalars():
            found.setdefault(user.id, (user, how))
    return list(found.values())


def _merge_provisioned(org: Organization, result: entra.SignIn, user: User) -> None:
    """A user who signed in before provisioning was turned on, and whom Entra provisioned as a second account that
    their sign-ins do not reach: merge that account into theirs (exactly one candidate; several: none, ids logged)."""
    candidates = _provisioned_candidates(org, result)
    if len(candidates) > 1:
        log.warning("Sign-in of user %s of organisation %s matched several provisioned users (%s): none merged",
                    user.id, org.id, ", ".join(str(u.id) for u, _ in candidates))
    elif candidates:
        merge_into(org, candidates[0][0], user)


def _not_matched(org: Organization, reason: str) -> PortalError:
    return refused(reason, f"{org.name} provisions its users' accounts from Microsoft Entra, and the account "
                   "provisioned for you could not be matched to the Microsoft account you signed in with, so you "
                   "cannot sign in yet. Ask your organisation's administrator for help.",
                   title="Your account could not be matched",
                   hint="For the administrator: in Microsoft Entra, check the provisioning's attribute mapping for "
                        "externalId (objectId or mailNickname); the SECURITY tab counts the users not yet linked.")


def _link_or_create(org: Organization, result: entra.SignIn) -> User:
    """First SSO sign-in: link the provisioned user whose externalId is the object id or the mail alias, else an
    existing account of the organisation by verified email (never a provisioned one: Entra said who they are), else
    create one. Refused rather than creating a second account for someone provisioning governs."""
    candidates = _provisioned_candidates(org, result)
    if len(candidates) > 1:
        log.warning("Sign-in to organisation %s matched several provisioned users (%s): none linked", org.id,
                    ", ".join(str(u.id) for u, _ in candidates))
        raise _not_matched(org, "provisioned_ambiguous")
    if candidates:
        [(provisioned, how)] = candidates
        provisioned.tenant_id, provisioned.object_id = result.tenant_id, result.object_id
        record("identity_linked", "success", org=org, actor=provisioned,
               detail="provisioned_object_id" if how == "objectId" else "provisioned_mail_nickname")
        return provisioned
    emails = org_emails(org, result)
    for email in emails:
        for existing in users_by_email(email, org):
            if existing.object_id is None and existing.scim_id is None:
                existing.tenant_id, existing.object_id = result.tenant_id, result.object_id
                record("identity_linked", "success", org=org, actor=existing)
                return existing
    if org.scim_token_hash is not None:
        # Provisioning is on and made an account with this email that nothing above matched: a second account would
        # escape provisioning (disabling the person in Entra would not reach it). The email only refuses here.
        unmatched = sorted({u.id for email in emails for u in users_by_email(email, org)
                            if u.scim_id is not None and u.object_id is None})
        if unmatched:
            log.warning("Sign-in to organisation %s refused: provisioned user(s) %s not matched by externalId",
                        org.id, ", ".join(map(str, unmatched)))
            raise _not_matched(org, "provisioned_not_matched")
    # The email comes from Microsoft: store_profile keeps it only if the organisation keeps copies.
    user = User(organization=org, role="member", tenant_id=result.tenant_id, object_id=result.object_id,
                email_hmac=b"", email_enc=b"")
    db.session.add(user)
    db.session.flush()  # the session row about to be written needs the user's id
    record("user_created", "success", org=org, actor=user, detail="sso")
    return user


def _activate_sso(org: Organization, result: entra.SignIn, actor: User | None, pending: dict[str, Any],
                  state: State) -> SsoOutcome:
    lock_organization(org)
    if actor is None or actor.id != pending.get("actor_id") or not actor.is_admin or actor.organization_id != org.id:
        raise NotAllowed("Only the administrator who started the activation can finish it.")
    if org.tenant_id and org.tenant_id != result.tenant_id:
        raise NotAllowed("This organisation is bound to another Microsoft tenant. Deactivate SSO first.",
                         title="Different tenant")
    other = db.session.execute(db.select(Organization).where(Organization.tenant_id == result.tenant_id,
                                                             Organization.id != org.id)).scalar_one_or_none()
    if other is not None:
        # The page names no other customer; the operator's log says which organisation holds the tenant.
        log.warning("SSO activation for organisation %r (id %s) refused: tenant %s is bound to organisation %r (id %s)",
                    org.name, org.id, result.tenant_id, other.name, other.id)
        raise NotAllowed("This Microsoft tenant cannot be connected. Contact the portal's operator.",
                         title="Tenant cannot be connected")
    if not org_emails(org, result):
        raise NotAllowed(
            "The Microsoft account you signed in with does not have a verified email in one of "
            f"the domains of {org.name}, so it cannot prove the tenant belongs to {org.name}. Nothing was changed.",
            title="Account does not match the organisation",
            hint="Sign in with your work account whose email ends in one of the organisation's domains.")
    # Any verified account of the organisation proves the tenant; only the admin's own is linked to the admin.
    own = (actor.tenant_id, actor.object_id) == (result.tenant_id, result.object_id) or (
        actor.object_id is None and normalise_or_raw(user_email(actor)) in org_emails(org, result))
    holder = _user_by_identity(result.tenant_id, result.object_id)
    if own and holder is not None and holder.id != actor.id:
        raise NotAllowed("That Microsoft account is already linked to another user of this portal.")
    first_binding = bind_tenant(org, result.tenant_id)
    org.sso_active = True
    org.sso_activated_at = utcnow()
    org.sso_activated_by_id = actor.id
    if own:
        actor.tenant_id, actor.object_id = result.tenant_id, result.object_id
        store_profile(actor, result, current_sid_hash(state))
    if first_binding:
        record("tenant_bound", "success", org=org, actor=actor, detail=result.tenant_id)
    record("sso_activate", "success", org=org, actor=actor, detail="" if own else "account_not_linked")
    db.session.commit()
    return SsoOutcome(actor, None if own else org_emails(org, result)[0])


def deactivate_sso(org: Organization, actor: Actor, *, via: str = "settings") -> None:
    """Turn SSO off and unbind the tenant; SSO sessions of the organisation end. Password accounts keep working."""
    require_admin(actor, org, "SSO deactivation")
    org.sso_active = False
    org.require_sso = False
    org.tenant_id = None
    org.sso_activated_at = None
    org.sso_activated_by_id = None
    org.admin_consent_at = None
    org.admin_consent_by_id = None
    user_ids = db.select(User.id).where(User.organization_id == org.id)
    sso_sessions = db.select(LoginSession.id).where(LoginSession.user_id.in_(user_ids), LoginSession.method == "sso")
    db.session.execute(db.delete(StoredProfile).where(StoredProfile.session_id.in_(sso_sessions),
                                                      StoredProfile.kept.is_(False)))
    db.session.execute(db.delete(LoginSession).where(LoginSession.id.in_(sso_sessions)))
    record("sso_deactivate", "success", org=org, actor=actor, detail=via)
    db.session.commit()
