"""The emulator's Flask app: Entra ID v2 endpoints, browser pages and Graph /me."""
from __future__ import annotations

import datetime
import hashlib
import hmac
import secrets
from typing import TYPE_CHECKING
from urllib.parse import urlencode, urlsplit

import jwt
from flask import (Blueprint, Flask, Response, current_app, jsonify, redirect,
                   render_template, request, session)
from werkzeug.exceptions import HTTPException

from . import tokens
from .transport import GRAPH_PREFIX

if TYPE_CHECKING:
    from . import Emulator
    from .directory import Tenant, User

bp = Blueprint("entra", __name__)

LOGIN = "https://login.microsoftonline.com"
GENERIC_TENANTS = ("organizations", "common")
OIDC_SCOPES = ("openid", "profile", "email", "offline_access")
GRAPH_RESOURCE = "https://graph.microsoft.com/"
CODE_LIFETIME = 600
TOKEN_LIFETIME = 3599

# How Entra words each permission on its consent page.
PERMISSION_TEXT = {
    "user.read": "Sign you in and read your profile",
    "openid": "Sign you in",
    "profile": "View your basic profile",
    "email": "View your email address",
    "offline_access": "Maintain access to data you have given it access to",
}
GRAPH_DEFAULT = ["businessPhones", "displayName", "givenName", "jobTitle", "mail",
                 "mobilePhone", "officeLocation", "preferredLanguage", "surname",
                 "userPrincipalName", "id"]
GRAPH_EXTRA = ["department", "companyName", "streetAddress", "city", "state", "postalCode",
               "country", "usageLocation"]


def create_app(emu: "Emulator") -> Flask:
    """Build the emulator's own Flask app (own secret key and session cookie)."""
    app = Flask(__name__, static_folder="static", template_folder="templates")
    browser = urlsplit(emu.browser_url)
    app.config.update(
        SECRET_KEY=emu.secret_key,
        SESSION_COOKIE_NAME="entra_emulator_session",
        # Scope the cookie to where the browser sees us, so it never reaches the portal.
        SESSION_COOKIE_PATH=browser.path or "/",
        SESSION_COOKIE_SECURE=browser.scheme == "https",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        MAX_CONTENT_LENGTH=emu.max_content_length,
    )
    app.json.sort_keys = False  # Graph clients may rely on Graph's property order
    app.extensions["entra_emulator"] = emu
    app.jinja_env.globals["csrf_token"] = _csrf_token
    app.register_blueprint(bp)
    app.after_request(_security_headers)
    app.register_error_handler(HTTPException, _http_error)
    return app


def _http_error(e: HTTPException):
    """Unknown paths and wrong methods: Graph answers in JSON, the sign-in host with a page in its own look."""
    if request.path.startswith(GRAPH_PREFIX + "/"):
        return jsonify(error={"code": e.name.replace(" ", ""), "message": e.description}), e.code
    return render_template("http_error.html", status=e.code, title=e.name), e.code


def _security_headers(response: Response) -> Response:
    """The browser pages get the same protections as the portal's (no inline script, no framing)."""
    response.headers.setdefault("Content-Security-Policy", "default-src 'self'; object-src 'none'; base-uri 'none'; "
                                "frame-ancestors 'none'; form-action *")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    response.headers["Cache-Control"] = "no-store"
    return response


def _emu() -> "Emulator":
    return current_app.extensions["entra_emulator"]


# -- error helpers -------------------------------------------------------------

def _describe(code: int, message: str) -> tuple[str, str, str, str]:
    """Entra's error_description: code, sentence, then trace/correlation ids and time."""
    trace, correlation = tokens.new_guid(), tokens.new_guid()
    stamp = datetime.datetime.fromtimestamp(_emu().now(), datetime.timezone.utc)
    timestamp = stamp.strftime("%Y-%m-%d %H:%M:%SZ")
    text = (f"AADSTS{code}: {message} Trace ID: {trace} Correlation ID: {correlation} "
            f"Timestamp: {timestamp}")
    return text, trace, correlation, timestamp


def _error_page(code: int, message: str, status: int = 400):
    text, trace, correlation, timestamp = _describe(code, message)
    return render_template("error.html", code=code, message=message, trace=trace,
                           correlation=correlation, timestamp=timestamp,
                           title="Sorry, but we're having trouble signing you in."), status


def _token_error(status: int, error: str, code: int, message: str):
    text, trace, correlation, timestamp = _describe(code, message)
    return jsonify(error=error, error_description=text, error_codes=[code],
                   timestamp=timestamp, trace_id=trace, correlation_id=correlation,
                   error_uri=f"{LOGIN}/error?code={code}"), status


def _with_query(uri: str, params: dict) -> str:
    params = {k: v for k, v in params.items() if v is not None}
    return uri + ("&" if "?" in uri else "?") + urlencode(params)


def _redirect_error(pending: dict, error: str, code: int, message: str, **extra):
    """Send the browser back to the app with an Entra-style error (state always kept)."""
    _drop_pending(pending)
    text, *_ = _describe(code, message)
    params = {"error": error, **extra, "error_description": text}
    if pending["kind"] == "adminconsent":
        params.update(admin_consent="True", tenant=extra.get("tenant") or pending.get("tid"))
    params["state"] = pending.get("state")
    return redirect(_with_query(pending["redirect_uri"], params), 302)


# -- CSRF and pending requests in the emulator's own session -------------------

def _csrf_token() -> str:
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
    return _emu().directory.user_by_oid(oid) if oid else None


# -- scopes --------------------------------------------------------------------

def _split_scopes(scopes: list[str]) -> tuple[list[str], list[str]]:
    """Split requested scopes into Graph permissions and OpenID Connect scopes."""
    graph, oidc = [], []
    for scope in scopes:
        if scope.lower() in OIDC_SCOPES:
            oidc.append(scope.lower())
            continue
        name = scope[len(GRAPH_RESOURCE):] if scope.lower().startswith(GRAPH_RESOURCE) else scope
        name = "User.Read" if name == ".default" else name
        if name.lower() not in (g.lower() for g in graph):
            graph.append(name)
    return graph, oidc


def _permission_lines(scopes: list[str]) -> list[str]:
    graph, oidc = _split_scopes(scopes)
    lines = [PERMISSION_TEXT.get(g.lower(), f"Microsoft Graph: {g}") for g in graph]
    if "openid" in oidc and not any(g.lower() == "user.read" for g in graph):
        lines.insert(0, PERMISSION_TEXT["openid"])
    lines += [PERMISSION_TEXT[s] for s in ("profile", "email", "offline_access") if s in oidc]
    return lines


# -- discovery and keys --------------------------------------------------------

def _resolve_tenant(segment: str) -> tuple[bool, "Tenant | None"]:
    """(known, tenant): generic segments are known with no tenant."""
    if segment.lower() in GENERIC_TENANTS:
        return True, None
    tenant = _emu().directory.tenant(segment)
    return tenant is not None, tenant


def _invalid_tenant(segment: str):
    return _token_error(400, "invalid_tenant", 90002,
                        f"Tenant '{segment}' not found. Check to make sure you have the correct "
                        "tenant ID and are signing into the correct cloud.")


@bp.get("/<tenant>/v2.0/.well-known/openid-configuration")
def discovery(tenant: str):
    emu = _emu()
    known, found = _resolve_tenant(tenant)
    if not known:
        return _invalid_tenant(tenant)
    path = found.tid if found else tenant
    login = emu.login_url
    issuer = f"{login}/{found.tid if found else '{tenantid}'}/v2.0"
    doc = {
        "token_endpoint": f"{login}/{path}/oauth2/v2.0/token",
        "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt",
                                                  "client_secret_basic"],
        "jwks_uri": f"{login}/{path}/discovery/v2.0/keys",
        "response_modes_supported": ["query", "fragment", "form_post"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "issuer": issuer,
        "request_uri_parameter_supported": False,
        "userinfo_endpoint": f"{emu.graph_url}/oidc/userinfo",
        "authorization_endpoint": f"{emu.browser_url}/{path}/oauth2/v2.0/authorize",
        "device_authorization_endpoint": f"{login}/{path}/oauth2/v2.0/devicecode",
        "http_logout_supported": True,
        "frontchannel_logout_supported": True,
        "end_session_endpoint": f"{emu.browser_url}/{path}/oauth2/v2.0/logout",
        "claims_supported": ["sub", "iss", "cloud_instance_name", "cloud_instance_host_name",
                             "cloud_graph_host_name", "msgraph_host", "aud", "exp", "iat",
                             "auth_time", "acr", "nonce", "preferred_username", "name", "tid",
                             "ver", "at_hash", "c_hash", "email"],
        "kerberos_endpoint": f"{login}/{path}/kerberos",
        "tenant_region_scope": found.region if found else None,
        "cloud_instance_name": "microsoftonline.com",
        "cloud_graph_host_name": "graph.windows.net",
        "msgraph_host": "graph.microsoft.com",
        "rbac_url": "https://pas.windows.net",
    }
    doc.update(emu.faults.get("discovery") or {})
    return jsonify(doc)


@bp.get("/<tenant>/discovery/v2.0/keys")
def jwks(tenant: str):
    known, _ = _resolve_tenant(tenant)
    if not known:
        return _invalid_tenant(tenant)
    emu = _emu()
    doc = emu.keys.jwks(emu.login_url, with_consumer=emu.faults.get("id_token_alg") == "consumer-key")
    if "jwks_keys" in emu.faults:
        doc["keys"] = list(emu.faults["jwks_keys"])
    doc["keys"] += list(emu.faults.get("jwks_extra_keys") or [])
    return jsonify(doc)


# -- authorize and admin consent (browser) ---------------------------------------

def _start(kind: str, segment: str, params):
    """Check the request like Entra does and remember it as a pending sign-in."""
    emu = _emu()
    known, tenant = _resolve_tenant(segment)
    if not known:
        return _error_page(90002, f"Tenant '{segment}' not found. Check to make sure you have "
                                  "the correct tenant ID and are signing into the correct cloud.")
    client_id = params.get("client_id", "")
    client = emu.clients.get(client_id)
    if client is None:
        return _error_page(700016, f"Application with identifier '{client_id}' was not found "
                                   f"in the directory '{tenant.name if tenant else segment}'. "
                                   "This can happen if the application has not been installed "
                                   "by the administrator of the tenant or consented to by any "
                                   "user in the tenant. You might have sent your authentication "
                                   "request to the wrong tenant.")
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
    emu = _emu()
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
    if settings["assignment_required"] and user.oid not in settings["assigned"]:
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


def _need_admin_text() -> str:
    return ("Admin consent is required for the permissions requested by this application. "
            "An admin consent request may be sent to the admin.")


def _consent_needed(pending: dict, user: "User") -> bool:
    emu = _emu()
    if emu.has_admin_consent(user.tid, pending["client_id"]):
        return False
    graph, _ = _split_scopes(pending["scopes"])
    granted = emu.store.user_consent(user.tid, user.oid, pending["client_id"])
    return not {g.lower() for g in graph} <= granted


def _page(template: str, pending: dict, **context):
    return render_template(template, pending=pending, action=_flow_url(pending), **context)


def _flow_url(pending: dict) -> str:
    path = ("oauth2/v2.0/authorize" if pending["kind"] == "authorize" else "v2.0/adminconsent")
    return f"{request.script_root}/{pending['segment']}/{path}"


def _signin_page(pending: dict, notice: str | None):
    emu = _emu()
    tenants = ([emu.directory.tenant(pending["tid"])] if pending["tid"]
               else emu.directory.tenants)
    return _page("signin.html", pending, tenants=tenants, notice=notice,
                 hint=(pending.get("login_hint") or "").lower(),
                 client=emu.clients[pending["client_id"]])


def _issue_code(pending: dict, user: "User"):
    emu = _emu()
    code = secrets.token_urlsafe(64)
    emu.store.add_code(code, {
        "client_id": pending["client_id"], "redirect_uri": pending["redirect_uri"],
        "code_challenge": pending["code_challenge"], "nonce": pending.get("nonce"),
        "scopes": pending["scopes"], "oid": user.oid, "tid": user.tid,
        "sid": session.setdefault("sid", tokens.new_guid()),
    }, emu.now() + CODE_LIFETIME)
    _drop_pending(pending)
    return redirect(_with_query(pending["redirect_uri"], {
        "code": code, "state": pending.get("state"), "session_state": session["sid"]}), 302)


def _admin_consent_success(pending: dict, user: "User"):
    _drop_pending(pending)
    return redirect(_with_query(pending["redirect_uri"], {
        "admin_consent": "True", "tenant": user.tid,
        "scope": GRAPH_RESOURCE + "User.Read", "state": pending.get("state")}), 302)


def _handle_post(kind: str, segment: str):
    """Dispatch a form step of a pending sign-in (sign in, consent, admin approval)."""
    emu = _emu()
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
        if user is None:
            return _signin_page(pending, "Choose an account to sign in.")
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
        graph, _ = _split_scopes(pending["scopes"])
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


@bp.route("/<tenant>/oauth2/v2.0/authorize", methods=["GET", "POST"])
def authorize(tenant: str):
    if request.method == "POST":
        return _handle_post("authorize", tenant)
    return _start("authorize", tenant, request.args)


@bp.route("/<tenant>/v2.0/adminconsent", methods=["GET", "POST"])
def adminconsent(tenant: str):
    if request.method == "POST":
        return _handle_post("adminconsent", tenant)
    return _start("adminconsent", tenant, request.args)


@bp.get("/<tenant>/oauth2/v2.0/logout")
def logout(tenant: str):
    emu = _emu()
    session.clear()
    target = request.args.get("post_logout_redirect_uri", "")
    origin = _origin(target)
    if origin and any(_origin(uri) == origin for c in emu.clients.values()
                      for uri in c["redirect_uris"]):
        return redirect(target, 302)
    return render_template("signed_out.html", title="You signed out of your account")


def _origin(uri: str) -> tuple | None:
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    default = 443 if parts.scheme == "https" else 80
    try:
        port = parts.port or default
    except ValueError:
        return None
    return parts.scheme, parts.hostname.lower(), port


# -- token endpoint (back channel) ----------------------------------------------

@bp.post("/<tenant>/oauth2/v2.0/token")
def token(tenant: str):
    emu = _emu()
    if not _resolve_tenant(tenant)[0]:
        return _invalid_tenant(tenant)
    form = request.form
    fault = emu.faults.get("token_response")
    if fault:
        if form.get("code"):
            emu.store.redeem_code(form["code"], emu.now())  # still single use
        status, body, content_type = fault
        return Response(body, status=status, content_type=content_type)

    client_id, secret = form.get("client_id", ""), form.get("client_secret")
    if request.authorization and request.authorization.type == "basic":
        client_id = request.authorization.username or client_id
        secret = request.authorization.password
    client = emu.clients.get(client_id)
    if client is None:
        return _token_error(400, "unauthorized_client", 700016,
                            f"Application with identifier '{client_id}' was not found in the "
                            f"directory '{tenant}'. This can happen if the application has not "
                            "been installed by the administrator of the tenant or consented to "
                            "by any user in the tenant. You might have sent your "
                            "authentication request to the wrong tenant.")
    if not secret or not hmac.compare_digest(secret.encode(), client["secret"].encode()):
        return _token_error(401, "invalid_client", 7000215,
                            "Invalid client secret provided. Ensure the secret being sent in "
                            "the request is the client secret value, not the client secret ID, "
                            f"for a secret added to app '{client_id}'.")
    grant_type = form.get("grant_type")
    if grant_type == "authorization_code":
        return _redeem_code(client_id)
    if grant_type == "refresh_token":
        return _redeem_refresh_token(client_id)
    return _token_error(400, "unsupported_grant_type", 70003,
                        f"The app requested an unsupported grant type '{grant_type}'.")


def _redeem_code(client_id: str):
    emu = _emu()
    form = request.form
    code = form.get("code")
    if not code:
        return _token_error(400, "invalid_request", 900144, "The request body must contain "
                                                            "the following parameter: 'code'.")
    outcome, data = emu.store.redeem_code(code, emu.now())
    if outcome in ("unknown", "expired"):
        return _token_error(400, "invalid_grant", 70008,
                            "The provided authorization code or refresh token has expired due "
                            "to inactivity. Send a new interactive authorization request for "
                            "this user and resource.")
    if outcome == "redeemed":
        return _token_error(400, "invalid_grant", 54005,
                            "OAuth2 Authorization code was already redeemed, please retry with "
                            "a new valid code or use an existing refresh token.")
    if data["client_id"] != client_id:
        return _token_error(400, "invalid_grant", 70000,
                            "The provided value for the 'code' parameter is not valid.")
    if form.get("redirect_uri") != data["redirect_uri"]:
        return _token_error(400, "invalid_grant", 500112,
                            f"The reply address '{form.get('redirect_uri')}' does not match "
                            f"the reply address '{data['redirect_uri']}' provided when "
                            "requesting Authorization code.")
    verifier = form.get("code_verifier", "")
    expected = tokens.b64url(hashlib.sha256(verifier.encode("ascii", "replace")).digest())
    if not verifier or not hmac.compare_digest(expected, data["code_challenge"] or ""):
        return _token_error(400, "invalid_grant", 501481,
                            "The Code_Verifier does not match the code_challenge supplied in "
                            "the authorization request.")
    user = emu.directory.user_by_oid(data["oid"])
    return _token_response(client_id, user, data["scopes"], data.get("nonce"), data.get("sid"))


def _redeem_refresh_token(client_id: str):
    emu = _emu()
    data = emu.store.take_refresh_token(request.form.get("refresh_token", ""), emu.now())
    if data is None or data["client_id"] != client_id:
        return _token_error(400, "invalid_grant", 70008,
                            "The provided authorization code or refresh token has expired due "
                            "to inactivity. Send a new interactive authorization request for "
                            "this user and resource.")
    user = emu.directory.user_by_oid(data["oid"])
    return _token_response(client_id, user, data["scopes"], None)


def _token_response(client_id: str, user: "User", scopes: list[str], nonce: str | None,
                    sid: str | None = None):
    emu = _emu()
    graph, oidc = _split_scopes(scopes)
    granted = graph + ["profile", "openid", "email"]
    body = {
        "token_type": "Bearer", "scope": " ".join(granted),
        "expires_in": TOKEN_LIFETIME, "ext_expires_in": TOKEN_LIFETIME,
        "access_token": _access_token(client_id, user, graph),
    }
    if "offline_access" in oidc:
        refresh = secrets.token_urlsafe(96)
        emu.store.add_refresh_token(refresh, {"client_id": client_id, "oid": user.oid,
                                              "scopes": scopes}, emu.now() + 90 * 86400)
        body["refresh_token"] = refresh
    body["id_token"] = _id_token(client_id, user, nonce, sid)
    body["client_info"] = tokens.client_info(user.oid, user.tid)
    return jsonify(body)


def _id_token(client_id: str, user: "User", nonce: str | None, sid: str | None) -> str:
    emu = _emu()
    now = int(emu.now())
    claims = {
        "aud": client_id, "iss": f"{emu.login_url}/{user.tid}/v2.0",
        "iat": now, "nbf": now, "exp": now + 3600,
        "aio": tokens.random_claim(),
        "login_hint": tokens.b64url(f"O.{user.oid}.{user.tid}.{tokens.random_claim()}".encode()),
        "name": user.display_name, "oid": user.oid,
        "preferred_username": user.upn, "rh": tokens.random_claim(),
        "sid": sid or tokens.new_guid(),
        "sub": tokens.pairwise_sub(client_id, user.oid), "tid": user.tid,
        "uti": tokens.random_claim(), "ver": "2.0",
        "xms_edov": emu.directory.email_domain_verified(user),
    }
    if user.mail:
        claims["email"] = user.mail
    if nonce:
        claims["nonce"] = nonce
    for name, value in (emu.faults.get("id_token_claims") or {}).items():
        if value is None:
            claims.pop(name, None)
        else:
            claims[name] = value
    return tokens.sign_token(emu.keys, claims, header_changes=emu.faults.get("id_token_header"),
                             alg_fault=emu.faults.get("id_token_alg"))


def _access_token(client_id: str, user: "User", graph_scopes: list[str]) -> str:
    emu = _emu()
    now = int(emu.now())
    claims = {
        "aud": tokens.GRAPH_AUDIENCE, "iss": f"https://sts.windows.net/{user.tid}/",
        "iat": now, "nbf": now, "exp": now + TOKEN_LIFETIME,
        "appid": client_id, "app_displayname": emu.clients[client_id]["name"],
        "idtyp": "user", "name": user.display_name, "oid": user.oid,
        "scp": " ".join(graph_scopes + ["openid", "profile", "email"]),
        "sub": tokens.pairwise_sub(tokens.GRAPH_AUDIENCE, user.oid), "tid": user.tid,
        "unique_name": user.upn, "upn": user.upn, "uti": tokens.random_claim(), "ver": "1.0",
    }
    return tokens.sign_token(emu.keys, claims)


# -- Microsoft Graph ---------------------------------------------------------------

def _graph_error(status: int, code: str, message: str):
    stamp = datetime.datetime.fromtimestamp(_emu().now(), datetime.timezone.utc)
    return jsonify(error={"code": code, "message": message, "innerError": {
        "date": stamp.strftime("%Y-%m-%dT%H:%M:%S"), "request-id": tokens.new_guid(),
        "client-request-id": request.headers.get("client-request-id") or tokens.new_guid()}}
    ), status


def _graph_user():
    """Return (user, None) for a valid Graph access token, else (None, error response)."""
    emu = _emu()
    status = emu.faults.get("graph_status")
    if status:
        return None, _graph_error(int(status), "generalException",
                                  "An emulated Graph failure occurred.")
    auth = request.headers.get("Authorization", "")
    if not auth.startswith("Bearer ") or not auth[7:].strip():
        return None, _graph_error(401, "InvalidAuthenticationToken", "Access token is empty.")
    raw = auth[7:].strip()
    try:
        header = jwt.get_unverified_header(raw)
        key = emu.keys.public_key(header.get("kid", ""))
        if key is None or header.get("alg") != "RS256":
            raise jwt.InvalidTokenError("unknown signing key")
        # Expiry is checked below against the emulator's clock, not the wall clock.
        claims = jwt.decode(raw, key, algorithms=["RS256"], audience=tokens.GRAPH_AUDIENCE,
                            options={"verify_exp": False, "verify_nbf": False,
                                     "verify_iat": False, "require": ["exp", "oid"]})
    except jwt.InvalidTokenError:
        return None, _graph_error(401, "InvalidAuthenticationToken",
                                  "Access token validation failure. Invalid audience or "
                                  "signature.")
    if claims["exp"] < emu.now():
        return None, _graph_error(401, "InvalidAuthenticationToken",
                                  "Lifetime validation failed, the token is expired.")
    if "user.read" not in claims.get("scp", "").lower().split():
        return None, _graph_error(401, "InvalidAuthenticationToken",
                                  "Access token does not carry the User.Read scope.")
    user = emu.directory.user_by_oid(claims["oid"])
    if user is None:
        return None, _graph_error(404, "Request_ResourceNotFound",
                                  f"Resource '{claims['oid']}' does not exist.")
    return user, None


@bp.get(GRAPH_PREFIX + "/v1.0/me")
def graph_me():
    user, error = _graph_user()
    if error:
        return error
    known = {name.lower(): name for name in GRAPH_DEFAULT + GRAPH_EXTRA}
    select = request.args.get("$select")
    if select:
        fields = []
        for item in (part.strip() for part in select.split(",")):
            if not item:
                continue
            if item.lower() not in known:
                return _graph_error(400, "Request_BadRequest",
                                    f"Could not find a property named '{item}' on type "
                                    "'microsoft.graph.user'.")
            fields.append(known[item.lower()])
        context = ("https://graph.microsoft.com/v1.0/$metadata#users("
                   + ",".join(fields) + ")/$entity")
    else:
        fields = GRAPH_DEFAULT
        context = "https://graph.microsoft.com/v1.0/$metadata#users/$entity"
    body = {"@odata.context": context}
    for name in fields:
        body[name] = user.oid if name == "id" else user.profile.get(name)
    body.update(_emu().faults.get("graph_me") or {})
    return jsonify(body)


@bp.get(GRAPH_PREFIX + "/v1.0/me/photo/$value")
def graph_photo():
    user, error = _graph_user()
    if error:
        return error
    if not user.photo:
        return _graph_error(404, "ImageNotFound", "The photo wasn't found.")
    return Response(user.photo, content_type=user.photo_type or "image/png")
