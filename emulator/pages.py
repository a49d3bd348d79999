"""The sign-in host's browser pages: authorize and admin consent (sign-in, consent, admin approval), pending
requests and CSRF in the emulator's own session, and the errors Entra shows or sends back."""
from __future__ import annotations

import hmac
import secrets
from typing import TYPE_CHECKING
from urllib.parse import urlencode

from flask import Blueprint, redirect, render_template, request, session

from . import tokens
from .answers import (GRAPH_RESOURCE, client_not_found, current, describe, resolve_tenant, split_scopes,
                      tenant_not_found)

if TYPE_CHECKING:
    from .directory import User

bp = Blueprint("pages", __name__)

CODE_LIFETIME = 600

# How Entra words each permission on its consent page.
PERMISSION_TEXT = {
    "user.read": "Sign you in and read your profile",
    "openid": "Sign you in",
    "profile": "View your basic profile",
    "email": "View your email address",
    "offline_access": "Maintain access to data you have given it access to",
}


@bp.route("/<tenant>/oauth2/v2.0/authorize", methods=["GET", "POST"])
def authorize(tenant: str):
    return _step("authorize", tenant)


@bp.route("/<tenant>/v2.0/adminconsent", methods=["GET", "POST"])
def adminconsent(tenant: str):
    return _step("adminconsent", tenant)


def _step(kind: str, segment: str):
    """A GET starts a request; a POST is a form step of one (or, for authorize, a POSTed request)."""
    return _handle_post(kind, segment) if request.method == "POST" else _start(kind, segment, request.args)


def _start(kind: str, segment: str, params):
    """Check the request like Entra does and remember it as a pending sign-in."""
    emu = current()
    known, tenant = resolve_tenant(segment)
    if not known:
        return _error_page(90002, tenant_not_found(segment))
    client_id = params.get("client_id", "")
    client = emu.clients.get(client_id)
    if client is None:
        return _error_page(700016, client_not_found(client_id, tenant.name if tenant else segment))
    redirect_uri = params.get("redirect_uri", "")
    if redirect_uri not in client["redirect_uris"]:
        # Never redirect to an unregistered URI: show the error here instead.
        return _error_page(50011, f"The redirect URI '{redirect_uri}' specified in the request "
                                  "does not match the redirect URIs configured for the "
                                  f"application '{client_id}'. Make sure the redirect URI sent "
                                  "in the request matches one added to your application in the "
                                  "Azure portal.")
    pending = {
        "kind": kind, "segment": segment, "tid": tenant.tid if tenant else None,
        "client_id": client_id, "redirect_uri": redirect_uri, "state": params.get("state"),
        "scopes": params.get("scope", "").split(), "nonce": params.get("nonce"),
        "code_challenge": params.get("code_challenge"),
        "code_challenge_method": params.get("code_challenge_method"),
        "login_hint": params.get("login_hint"), "prompt": params.get("prompt"),
        "signed_in": False,
    }
    if kind == "authorize":
        response_type = params.get("response_type", "")
        if response_type != "code":
            return _redirect_error(pending, "unsupported_response_type", 700054,
                                   f"response_type '{response_type}' is not enabled for the "
                                   "application.")
        if not pending["code_challenge"]:
            return _redirect_error(pending, "invalid_request", 900144,
                                   "The request body must contain the following parameter: "
                                   "'code_challenge'.")
        if pending["code_challenge_method"] != "S256":
            return _redirect_error(pending, "invalid_request", 501491,
                                   "Invalid code_challenge_method; only S256 is accepted.")
    return _advance(_save_pending(pending))


def _advance(pending: dict, notice: str | None = None):
    """Move a pending request on: sign-in, policy checks, consent, then back to the app."""
    emu = current()
    user = _session_user()
    hint = (pending.get("login_hint") or "").strip().lower()
    if user and hint and user.upn.lower() != hint:
        user = None
    if pending.get("prompt") in ("login", "select_account") and not pending["signed_in"]:
        user = None
    if user is None:
        if pending.get("prompt") == "none":
            return _redirect_error(pending, "login_required", 50058,
                                   "A silent sign-in request was sent but no user is signed in.")
        return _signin_page(pending, notice)

    tenant = emu.directory.tenant(user.tid)
    client = emu.clients[pending["client_id"]]
    if pending["tid"] and user.tid != pending["tid"]:
        target = emu.directory.tenant(pending["tid"])
        return _redirect_error(
            pending, "access_denied", 50020,
            f"User account '{user.upn}' from identity provider 'https://sts.windows.net/"
            f"{user.tid}/' does not exist in tenant '{target.name}' and cannot access the "
            f"application '{pending['client_id']}'({client['name']}) in that tenant. The account "
            "needs to be added as an external user in the tenant first. Sign out and sign in "
            "again with a different Azure Active Directory user account.")

    if pending["kind"] == "adminconsent":
        if not user.is_admin:
            return _redirect_error(pending, "access_denied", 90094, _need_admin_text(),
                                   tenant=user.tid)
        if emu.has_admin_consent(user.tid, pending["client_id"]):
            return _admin_consent_success(pending, user)
        return _page("admin_consent.html", pending, user=user, tenant=tenant, client=client)

    settings = emu.tenant_settings(user.tid)
    if settings["assignment_required"] and not emu.is_assigned(user):
        return _redirect_error(
            pending, "access_denied", 50105,
            f"Your administrator has configured the application {client['name']} "
            f"('{pending['client_id']}') to block users unless they are specifically granted "
            f"('assigned') access to the application. The signed in user '{user.upn}' is "
            "blocked because they are not a direct member of a group with access, nor had "
            "access directly assigned by an administrator. Please contact your administrator "
            "to assign access to this application.")
    if not _consent_needed(pending, user) and pending.get("prompt") != "consent":
        return _issue_code(pending, user)
    if pending.get("prompt") == "none":
        return _redirect_error(
            pending, "consent_required", 65001,
            f"The user or administrator has not consented to use the application with ID "
            f"'{pending['client_id']}' named '{client['name']}'. Send an interactive "
            "authorization request for this user and resource.")
    if not settings["users_may_consent"] and not user.is_admin:
        return _page("need_admin.html", pending, user=user, tenant=tenant, client=client)
    return _page("consent.html", pending, user=user, tenant=tenant, client=client,
                 permissions=_permission_lines(pending["scopes"]))


def _handle_post(kind: str, segment: str):
    """Dispatch a form step of a pending sign-in (sign in, consent, admin approval)."""
    emu = current()
    if "pending" not in request.form:
        if kind == "authorize":
            return _start(kind, segment, request.form)  # a POSTed authorize request
        return _error_page(900144, "The request body must contain the following parameter: "
                                   "'pending'.")
    if not _csrf_ok():
        return _error_page(90015, "The request could not be verified (CSRF token missing or "
                                  "invalid). Go back to the application and start again.")
    pending = session.get("pending", {}).get(request.form["pending"])
    if pending is None or pending["kind"] != kind:
        return _error_page(50058, "The sign-in session expired or was not found. Go back to "
                                  "the application and start again.")
    step = request.form.get("step")
    if step == "signin":
        user = emu.directory.user_by_upn(request.form.get("username", ""))
        if user is None or emu.user_state(user.oid) == "deleted":
            return _signin_page(pending, "Choose an account to sign in.")
        if emu.user_state(user.oid) == "disabled":
            return _error_page(50057, "The user account is disabled. The user object in Active Directory "
                                      "backing this account has been disabled. An admin can re-enable this "
                                      "account through PowerShell.")
        session["user"] = user.oid
        session["sid"] = tokens.new_guid()
        pending["signed_in"] = True
        pending["login_hint"] = user.upn  # the account just chosen wins over the hint
        _update_pending(pending)
        return _advance(pending)

    user = _session_user()
    forced = pending.get("prompt") in ("login", "select_account") and not pending["signed_in"]
    if user is None or forced:
        return _advance(pending)
    if step == "approval":
        return _redirect_error(pending, "access_denied", 90094, _need_admin_text())
    accepted = request.form.get("decision") == "accept"
    if step == "consent" and kind == "authorize":
        if not accepted:
            return _redirect_error(pending, "access_denied", 65004,
                                   "User declined to consent to access the app.",
                                   error_subcode="cancel")
        settings = emu.tenant_settings(user.tid)
        if not user.is_admin and not settings["users_may_consent"]:
            return _advance(pending)  # shows "Need admin approval"
        if pending["tid"] and user.tid != pending["tid"]:
            return _advance(pending)
        if user.is_admin and request.form.get("on_behalf") == "yes":
            emu.store.add_admin_consent(user.tid, pending["client_id"], emu.now())
        graph, _ = split_scopes(pending["scopes"])
        emu.store.add_user_consent(user.tid, user.oid, pending["client_id"],
                                   {g.lower() for g in graph})
        return _advance_after_consent(pending, user)
    if step == "adminconsent" and kind == "adminconsent":
        if not user.is_admin or (pending["tid"] and user.tid != pending["tid"]):
            return _advance(pending)
        if not accepted:
            return _redirect_error(pending, "consent_required", 65004,
                                   "User declined to consent to access the app.",
                                   tenant=user.tid)
        emu.store.add_admin_consent(user.tid, pending["client_id"], emu.now())
        return _admin_consent_success(pending, user)
    return _error_page(900144, "The request body must contain the following parameter: 'step'.")


def _advance_after_consent(pending: dict, user: "User"):
    # prompt=consent has been honoured now; run the usual checks once more.
    pending["prompt"] = None
    _update_pending(pending)
    return _advance(pending)


def _need_admin_text() -> str:
    return ("Admin consent is required for the permissions requested by this application. "
            "An admin consent request may be sent to the admin.")


def _consent_needed(pending: dict, user: "User") -> bool:
    emu = current()
    if emu.has_admin_consent(user.tid, pending["client_id"]):
        return False
    graph, _ = split_scopes(pending["scopes"])
    granted = emu.store.user_consent(user.tid, user.oid, pending["client_id"])
    return not {g.lower() for g in graph} <= granted


def _page(template: str, pending: dict, **context):
    return render_template(template, pending=pending, action=_flow_url(pending), **context)


def _flow_url(pending: dict) -> str:
    path = ("oauth2/v2.0/authorize" if pending["kind"] == "authorize" else "v2.0/adminconsent")
    return f"{request.script_root}/{pending['segment']}/{path}"


def _signin_page(pending: dict, notice: str | None):
    emu = current()
    tenants = ([emu.directory.tenant(pending["tid"])] if pending["tid"]
               else emu.directory.tenants)
    return _page("signin.html", pending, tenants=tenants, notice=notice,
                 hint=(pending.get("login_hint") or "").lower(),
                 client=emu.clients[pending["client_id"]])


def _issue_code(pending: dict, user: "User"):
    emu = current()
    code = secrets.token_urlsafe(64)
    emu.store.add_code(code, {
        "client_id": pending["client_id"], "redirect_uri": pending["redirect_uri"],
        "code_challenge": pending["code_challenge"], "nonce": pending.get("nonce"),
        "scopes": pending["scopes"], "oid": user.oid, "tid": user.tid,
        "sid": session.setdefault("sid", tokens.new_guid()),
    }, emu.now() + CODE_LIFETIME)
    # The apps of this Microsoft session, with their tenant: sign-out loads their front-channel logout URLs.
    apps = [a for a in session.get("apps", []) if a != [pending["client_id"], user.tid]]
    session["apps"] = [*apps, [pending["client_id"], user.tid]][-8:]
    _drop_pending(pending)
    return redirect(_with_query(pending["redirect_uri"], {
        "code": code, "state": pending.get("state"), "session_state": session["sid"]}), 302)


def _admin_consent_success(pending: dict, user: "User"):
    _drop_pending(pending)
    return redirect(_with_query(pending["redirect_uri"], {
        "admin_consent": "True", "tenant": user.tid,
        "scope": GRAPH_RESOURCE + "User.Read", "state": pending.get("state")}), 302)


def _permission_lines(scopes: list[str]) -> list[str]:
    graph, oidc = split_scopes(scopes)
    lines = [PERMISSION_TEXT.get(g.lower(), f"Microsoft Graph: {g}") for g in graph]
    if "openid" in oidc and not any(g.lower() == "user.read" for g in graph):
        lines.insert(0, PERMISSION_TEXT["openid"])
    lines += [PERMISSION_TEXT[s] for s in ("profile", "email", "offline_access") if s in oidc]
    return lines


def _error_page(code: int, message: str, status: int = 400):
    text, trace, correlation, timestamp = describe(code, message)
    return render_template("error.html", code=code, message=message, trace=trace,
                           correlation=correlation, timestamp=timestamp,
                           title="Sorry, but we're having trouble signing you in."), status


def _with_query(uri: str, params: dict) -> str:
    params = {k: v for k, v in params.items() if v is not None}
    return uri + ("&" if "?" in uri else "?") + urlencode(params)


def _redirect_error(pending: dict, error: str, code: int, message: str, **extra):
    """Send the browser back to the app with an Entra-style error (state always kept)."""
    _drop_pending(pending)
    text, *_ = describe(code, message)
    params = {"error": error, **extra, "error_description": text}
    if pending["kind"] == "adminconsent":
        params.update(admin_consent="True", tenant=extra.get("tenant") or pending.get("tid"))
    params["state"] = pending.get("state")
    return redirect(_with_query(pending["redirect_uri"], params), 302)


def csrf_token() -> str:
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return session["csrf"]


def _csrf_ok() -> bool:
    sent = request.form.get("csrf_token", "")
    return bool(sent) and hmac.compare_digest(sent, session.get("csrf", ""))


def _save_pending(pending: dict) -> dict:
    pending["id"] = secrets.token_urlsafe(12)
    stash = dict(session.get("pending", {}))
    # Keep the cookie small: only the few most recent unfinished sign-ins survive.
    for old in list(stash)[:-4]:
        stash.pop(old)
    stash[pending["id"]] = pending
    session["pending"] = stash
    return pending


def _update_pending(pending: dict) -> None:
    stash = dict(session.get("pending", {}))
    stash[pending["id"]] = pending
    session["pending"] = stash


def _drop_pending(pending: dict) -> None:
    stash = dict(session.get("pending", {}))
    stash.pop(pending.get("id"), None)
    session["pending"] = stash


def _session_user() -> "User | None":
    oid = session.get("user")
    return current().directory.user_by_oid(oid) if oid else None
