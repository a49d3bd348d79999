"""Entra's back channel and protocol endpoints: discovery, signing keys, token, end-session."""
from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import TYPE_CHECKING
from urllib.parse import urlencode, urlsplit

from flask import Blueprint, Response, jsonify, make_response, redirect, render_template, request, session

from . import tokens
from .answers import (LOGIN, client_not_found, current, describe, resolve_tenant, split_scopes,
                      tenant_not_found)

if TYPE_CHECKING:
    from .directory import User

bp = Blueprint("protocol", __name__)

TOKEN_LIFETIME = 3599
EXPIRED_GRANT = ("The provided authorization code or refresh token has expired due to inactivity. Send a new "
                 "interactive authorization request for this user and resource.")


def _token_error(status: int, error: str, code: int, message: str):
    text, trace, correlation, timestamp = describe(code, message)
    return jsonify(error=error, error_description=text, error_codes=[code],
                   timestamp=timestamp, trace_id=trace, correlation_id=correlation,
                   error_uri=f"{LOGIN}/error?code={code}"), status


def _invalid_tenant(segment: str):
    return _token_error(400, "invalid_tenant", 90002,
                        tenant_not_found(segment))


@bp.get("/<tenant>/v2.0/.well-known/openid-configuration")
def discovery(tenant: str):
    emu = current()
    known, found = resolve_tenant(tenant)
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
    known, _ = resolve_tenant(tenant)
    if not known:
        return _invalid_tenant(tenant)
    emu = current()
    doc = emu.keys.jwks(emu.login_url, with_consumer=emu.faults.get("id_token_alg") == "consumer-key")
    if "jwks_keys" in emu.faults:
        doc["keys"] = list(emu.faults["jwks_keys"])
    doc["keys"] += list(emu.faults.get("jwks_extra_keys") or [])
    return jsonify(doc)


@bp.get("/<tenant>/oauth2/v2.0/logout")
def logout(tenant: str):
    """End the Microsoft session; frame the front-channel logout URL of each app signed in to in it (the app that
    asked for the sign-out is sent back instead: it has signed itself out)."""
    emu = current()
    sid, apps = session.get("sid"), session.get("apps", [])
    session.clear()
    target = request.args.get("post_logout_redirect_uri", "")
    origin = _origin(target)
    asking = next((cid for cid, c in emu.clients.items() for uri in c["redirect_uris"]
                   if origin and _origin(uri) == origin), None)
    frames = [_with_query(emu.clients[cid]["front_channel_logout_url"],
                          {"sid": sid, "iss": f"{emu.login_url}/{tid}/v2.0"})
              for cid, tid in apps
              if cid != asking and sid and emu.clients.get(cid, {}).get("front_channel_logout_url")]
    if asking and not frames:
        return redirect(target, 302)
    response = make_response(render_template("signed_out.html", title="You signed out of your account",
                                             frames=frames, back=target if asking else None))
    if frames:
        sources = " ".join(sorted({"{0.scheme}://{0.netloc}".format(urlsplit(f)) for f in frames}))
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action *; "
            f"frame-src {sources}")
    return response


def _with_query(uri: str, params: dict) -> str:
    return uri + ("&" if "?" in uri else "?") + urlencode({k: v for k, v in params.items() if v})


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


@bp.post("/<tenant>/oauth2/v2.0/token")
def token(tenant: str):
    emu = current()
    if not resolve_tenant(tenant)[0]:
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
                            client_not_found(client_id, tenant))
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
    emu = current()
    form = request.form
    code = form.get("code")
    if not code:
        return _token_error(400, "invalid_request", 900144, "The request body must contain "
                                                            "the following parameter: 'code'.")
    outcome, data = emu.store.redeem_code(code, emu.now())
    if outcome in ("unknown", "expired"):
        return _token_error(400, "invalid_grant", 70008, EXPIRED_GRANT)
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
    emu = current()
    data = emu.store.take_refresh_token(request.form.get("refresh_token", ""), emu.now())
    if data is None or data["client_id"] != client_id:
        return _token_error(400, "invalid_grant", 70008, EXPIRED_GRANT)
    user = emu.directory.user_by_oid(data["oid"])
    return _token_response(client_id, user, data["scopes"], None)


def _token_response(client_id: str, user: "User", scopes: list[str], nonce: str | None,
                    sid: str | None = None):
    emu = current()
    graph, oidc = split_scopes(scopes)
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
    emu = current()
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
    roles = emu.roles_of(user, client_id)
    if roles:
        claims["roles"] = roles
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
    emu = current()
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
