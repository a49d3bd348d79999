"""Tests for the Entra ID + Graph emulator, driven at the protocol boundary."""
import base64
import hashlib
import hmac
import json
import re
import secrets
import sqlite3
import time
from html import unescape
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
import msal
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from werkzeug.exceptions import NotFound
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.test import Client

from emulator import Emulator

CLIENT_ID = "6a5e1f0c-3b2d-4c8e-9f7a-1d2c3b4a5e6f"
SECRET = "demo-secret"
REDIRECT = "http://localhost/auth/callback"
BROWSER = "http://localhost/_entra"
LOGIN = "https://login.microsoftonline.com"
TOKEN_URL = f"{LOGIN}/organizations/oauth2/v2.0/token"
NW = "6f1c2d3e-4a5b-4c7d-8e9f-0a1b2c3d4e5f"
FB = "b2e4d6f8-1a3c-4e5a-9b7d-c9e1f3a5b7d9"
CLIENTS = {CLIENT_ID: {"secret": SECRET, "redirect_uris": [REDIRECT], "name": "Contoso Portal"}}


@pytest.fixture(scope="session")
def seed(tmp_path_factory):
    """One emulator's state (its RSA key) copied into each test: keeps the suite fast."""
    path = tmp_path_factory.mktemp("seed")
    emu = Emulator(str(path), browser_url=BROWSER, clients=CLIENTS)
    return emu.store.path


def make_emulator(folder, seed_path):
    folder.mkdir(exist_ok=True)
    target = folder / "entra-emulator.sqlite"
    if not target.exists():
        with sqlite3.connect(seed_path) as src, sqlite3.connect(target) as dst:
            src.backup(dst)
    return Emulator(str(folder), browser_url=BROWSER, clients=CLIENTS)


@pytest.fixture
def emu(tmp_path, seed):
    return make_emulator(tmp_path / "instance", seed)


@pytest.fixture
def http(emu):
    return emu.mount(requests.Session())


@pytest.fixture
def browser(emu):
    # Mounted under /_entra like the portal does, so cookie paths behave as in real use.
    return Client(DispatcherMiddleware(NotFound(), {"/_entra": emu.wsgi}))


# -- helpers -------------------------------------------------------------------

def pkce():
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    return verifier, challenge.rstrip(b"=").decode()


def authorize_path(tenant="organizations", challenge="x", **params):
    query = {"client_id": CLIENT_ID, "response_type": "code", "redirect_uri": REDIRECT,
             "scope": "User.Read openid profile offline_access", "state": "st-1",
             "nonce": "n-1", "code_challenge": challenge, "code_challenge_method": "S256",
             "response_mode": "query", **params}
    query = {k: v for k, v in query.items() if v is not None}
    return f"/_entra/{tenant}/oauth2/v2.0/authorize?" + urlencode(query)


def form_of(response):
    html = response.get_data(as_text=True)
    action = unescape(re.search(r'<form method="post" action="([^"]+)"', html).group(1))
    hidden = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', html))
    return action, {k: unescape(v) for k, v in hidden.items()}


def submit(browser, response, **fields):
    action, hidden = form_of(response)
    return browser.post(action, data={**hidden, **fields})


def callback(response):
    assert response.status_code == 302, response.get_data(as_text=True)[:500]
    location = response.headers["Location"]
    assert location.startswith(REDIRECT), location
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def page_kind(response):
    html = response.get_data(as_text=True)
    for kind in ("signin", "consent", "approval", "adminconsent"):
        if f'name="step" value="{kind}"' in html:
            return kind
    return None


def sign_in(browser, upn, tenant="organizations", accept=True, **params):
    """Run authorize → sign-in (→ consent) and return (callback params, verifier)."""
    verifier, challenge = pkce()
    response = browser.get(authorize_path(tenant, challenge, login_hint=upn, **params))
    if page_kind(response) == "signin":
        response = submit(browser, response, username=upn)
    if page_kind(response) == "consent" and accept is not None:
        response = submit(browser, response, decision="accept" if accept else "cancel")
    return callback(response), verifier


def redeem(http, code, verifier, **overrides):
    data = {"grant_type": "authorization_code", "client_id": CLIENT_ID,
            "client_secret": SECRET, "code": code, "redirect_uri": REDIRECT,
            "code_verifier": verifier, "scope": "User.Read openid profile offline_access",
            "client_info": "1", **overrides}
    return http.post(TOKEN_URL, data={k: v for k, v in data.items() if v is not None})


def tokens_for(http, browser, upn="lena.fischer@northwind.example"):
    params, verifier = sign_in(browser, upn)
    response = redeem(http, params["code"], verifier)
    assert response.status_code == 200, response.text
    return response.json()


def verify_id_token(http, id_token, tid=None):
    keys = http.get(f"{LOGIN}/organizations/discovery/v2.0/keys").json()["keys"]
    header = jwt.get_unverified_header(id_token)
    jwk = next(k for k in keys if k["kid"] == header["kid"])
    claims = jwt.decode(id_token, jwt.PyJWK(jwk, "RS256").key, algorithms=["RS256"],
                        audience=CLIENT_ID)
    assert claims["iss"] == f"{LOGIN}/{tid or claims['tid']}/v2.0"
    return claims


def assert_aadsts(text, code):
    assert text.startswith(f"AADSTS{code}: "), text
    assert "Trace ID: " in text and "Correlation ID: " in text and "Timestamp: " in text


def token_error(response, status, error, code):
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == error
    assert body["error_codes"] == [code]
    assert_aadsts(body["error_description"], code)
    assert {"timestamp", "trace_id", "correlation_id"} <= body.keys()


# -- MSAL end to end -----------------------------------------------------------

# MSAL 1.39 warns about query mode; the portal keeps it on purpose (see ENTRA.md).
msal_warning = pytest.mark.filterwarnings("ignore:response_mode='form_post':UserWarning")


@msal_warning
def test_msal_happy_path(emu, http, browser):
    app = msal.ConfidentialClientApplication(
        CLIENT_ID, client_credential=SECRET, authority=f"{LOGIN}/organizations",
        http_client=http)
    flow = app.initiate_auth_code_flow(scopes=["User.Read"], redirect_uri=REDIRECT,
                                       login_hint="lena.fischer@northwind.example")
    assert flow["auth_uri"].startswith(f"{BROWSER}/organizations/oauth2/v2.0/authorize?")
    response = browser.get(flow["auth_uri"][len("http://localhost"):])
    assert page_kind(response) == "signin"
    assert re.search(r'value="lena.fischer@northwind.example"\s+checked',
                     response.get_data(as_text=True))
    response = submit(browser, response, username="lena.fischer@northwind.example")
    assert page_kind(response) == "consent"
    html = response.get_data(as_text=True)
    assert "Contoso Portal" in html and "Sign you in and read your profile" in html
    assert "on behalf of your organization" not in html  # members get no such box
    params = callback(submit(browser, response, decision="accept"))
    assert params["state"] == flow["state"] and "session_state" in params

    result = app.acquire_token_by_auth_code_flow(flow, params)
    assert "error" not in result, result
    assert result["token_type"] == "Bearer"
    assert "User.Read" in result["scope"]
    claims = verify_id_token(http, result["id_token"], NW)
    user = emu.directory.user_by_upn("lena.fischer@northwind.example")
    assert claims["oid"] == user.oid and claims["tid"] == NW
    assert claims["nonce"] == hashlib.sha256(flow["nonce"].encode()).hexdigest()
    assert claims["preferred_username"] == user.upn and claims["email"] == user.mail
    assert claims["xms_edov"] is True and claims["ver"] == "2.0"
    assert claims["exp"] == claims["iat"] + 3600

    auth = {"Authorization": f"Bearer {result['access_token']}"}
    me = http.get("https://graph.microsoft.com/v1.0/me?$select=id,displayName,department,city",
                  headers=auth, timeout=5)
    assert me.status_code == 200
    body = me.json()
    assert body.pop("@odata.context").endswith("users(id,displayName,department,city)/$entity")
    assert body == {"id": user.oid, "displayName": "Lena Fischer", "department": "Sales",
                    "city": "Seattle"}
    photo = http.get("https://graph.microsoft.com/v1.0/me/photo/$value", headers=auth)
    assert photo.status_code == 200 and photo.headers["Content-Type"] == "image/png"
    assert photo.content.startswith(b"\x89PNG") and photo.content == user.photo
    methods = [(m, url.split("?")[0]) for m, url, _ in emu.requests]
    assert ("GET", f"{LOGIN}/organizations/v2.0/.well-known/openid-configuration") in methods
    assert ("POST", TOKEN_URL) in methods
    assert ("GET", "https://graph.microsoft.com/v1.0/me") in methods
    assert ("GET", "https://graph.microsoft.com/v1.0/me", 5) in [
        (m, u.split("?")[0], t) for m, u, t in emu.requests]


@msal_warning
def test_msal_sees_token_endpoint_errors(emu, http):
    app = msal.ConfidentialClientApplication(
        CLIENT_ID, client_credential="wrong", authority=f"{LOGIN}/organizations",
        http_client=http)
    flow = app.initiate_auth_code_flow(scopes=["User.Read"], redirect_uri=REDIRECT)
    result = app.acquire_token_by_auth_code_flow(flow, {"code": "nope", "state": flow["state"]})
    assert result["error"] == "invalid_client"
    assert result["error_description"].startswith("AADSTS7000215: ")


# -- discovery and keys ----------------------------------------------------------

def test_discovery_generic_tenant(http):
    doc = http.get(f"{LOGIN}/organizations/v2.0/.well-known/openid-configuration").json()
    assert doc["issuer"] == f"{LOGIN}/{{tenantid}}/v2.0"
    assert doc["authorization_endpoint"] == f"{BROWSER}/organizations/oauth2/v2.0/authorize"
    assert doc["token_endpoint"] == TOKEN_URL
    assert doc["jwks_uri"] == f"{LOGIN}/organizations/discovery/v2.0/keys"
    assert doc["end_session_endpoint"] == f"{BROWSER}/organizations/oauth2/v2.0/logout"
    assert doc["subject_types_supported"] == ["pairwise"]
    assert doc["id_token_signing_alg_values_supported"] == ["RS256"]
    assert doc["msgraph_host"] == "graph.microsoft.com"
    assert doc["cloud_instance_name"] == "microsoftonline.com"


def test_discovery_specific_tenant_by_domain(http):
    doc = http.get(f"{LOGIN}/fabrikam.example/v2.0/.well-known/openid-configuration").json()
    assert doc["issuer"] == f"{LOGIN}/{FB}/v2.0"
    assert doc["token_endpoint"] == f"{LOGIN}/{FB}/oauth2/v2.0/token"


def test_discovery_unknown_tenant(http):
    response = http.get(f"{LOGIN}/nowhere.example/v2.0/.well-known/openid-configuration")
    token_error(response, 400, "invalid_tenant", 90002)


def test_jwks_shape(http):
    keys = http.get(f"{LOGIN}/{NW}/discovery/v2.0/keys").json()["keys"]
    assert len(keys) == 1
    assert {"kty", "use", "kid", "x5t", "n", "e"} <= keys[0].keys()
    assert keys[0]["kty"] == "RSA" and keys[0]["use"] == "sig"


def test_key_rotation_publishes_old_and_new(emu, http, browser):
    old_kid = http.get(f"{LOGIN}/common/discovery/v2.0/keys").json()["keys"][0]["kid"]
    new_kid = emu.rotate_signing_key()
    kids = [k["kid"] for k in http.get(f"{LOGIN}/common/discovery/v2.0/keys").json()["keys"]]
    assert set(kids) == {old_kid, new_kid}
    result = tokens_for(http, browser)
    assert jwt.get_unverified_header(result["id_token"])["kid"] == new_kid
    verify_id_token(http, result["id_token"])


# -- authorize: request checks -------------------------------------------------------

def test_unknown_client_is_an_error_page(browser):
    response = browser.get(authorize_path(client_id="00000000-0000-0000-0000-000000000000"))
    assert response.status_code == 400
    assert "AADSTS700016" in response.get_data(as_text=True)


def test_unregistered_redirect_uri_is_an_error_page_not_a_redirect(browser):
    response = browser.get(authorize_path(redirect_uri="https://evil.example/cb"))
    assert response.status_code == 400 and "Location" not in response.headers
    assert "AADSTS50011" in response.get_data(as_text=True)
    assert "demo only" in response.get_data(as_text=True)


def test_unknown_tenant_is_an_error_page(browser):
    response = browser.get(authorize_path("nowhere.example"))
    assert response.status_code == 400 and "AADSTS90002" in response.get_data(as_text=True)


@pytest.mark.parametrize("challenge, method", [(None, "S256"), ("abc", "plain"), ("abc", None)])
def test_pkce_is_required(browser, challenge, method):
    params = callback(browser.get(authorize_path(challenge=challenge,
                                                 code_challenge_method=method)))
    assert params["error"] == "invalid_request" and params["state"] == "st-1"
    assert params["error_description"].startswith("AADSTS")


# -- authorize: sign-in page and session -----------------------------------------------

def test_signin_page_lists_tenant_users_only(browser):
    html = browser.get(authorize_path(NW)).get_data(as_text=True)
    assert "lena.fischer@northwind.example" in html and "fabrikam.example" not in html
    assert "checked" not in html
    html = browser.get(authorize_path("organizations")).get_data(as_text=True)
    assert "lena.fischer@northwind.example" in html and "ines.moreau@fabrikam.example" in html
    assert "Emulated Microsoft Entra ID — demo only" in html
    assert "<script" not in html and '<label for="u-' in html


def test_signed_in_session_skips_signin_unless_prompt_login(browser):
    sign_in(browser, "lena.fischer@northwind.example")
    verifier, challenge = pkce()
    params = callback(browser.get(authorize_path(challenge=challenge)))  # no hint
    assert "code" in params
    response = browser.get(authorize_path(challenge=challenge,
                                          login_hint="lena.fischer@northwind.example"))
    assert "code" in callback(response)
    response = browser.get(authorize_path(challenge=challenge, prompt="login"))
    assert page_kind(response) == "signin"
    assert "code" in callback(submit(browser, response,
                                     username="lena.fischer@northwind.example"))
    # A different hint means a different account: show the sign-in page.
    response = browser.get(authorize_path(challenge=challenge,
                                          login_hint="omar.haddad@northwind.example"))
    assert page_kind(response) == "signin"


def test_signin_without_choice_shows_the_page_again(browser):
    response = browser.get(authorize_path())
    again = submit(browser, response)
    assert page_kind(again) == "signin" and "Choose an account" in again.get_data(as_text=True)


def test_post_without_csrf_token_is_rejected(browser):
    response = browser.get(authorize_path())
    action, hidden = form_of(response)
    hidden.pop("csrf_token")
    rejected = browser.post(action, data={**hidden, "username": "admin@northwind.example"})
    assert rejected.status_code == 400


def test_prompt_none_without_session(browser):
    params = callback(browser.get(authorize_path(prompt="none")))
    assert params["error"] == "login_required"


def test_user_of_other_tenant_is_refused(browser):
    verifier, challenge = pkce()
    response = browser.get(authorize_path(FB, challenge))
    params = callback(submit(browser, response, username="lena.fischer@northwind.example"))
    assert params["error"] == "access_denied" and params["state"] == "st-1"
    assert_aadsts(params["error_description"], 50020)


def test_assignment_required(emu, browser):
    lena = emu.directory.user_by_upn("lena.fischer@northwind.example")
    emu.set_tenant(NW, assignment_required=True, assigned=[lena.oid])
    params, _ = sign_in(browser, "omar.haddad@northwind.example")
    assert params["error"] == "access_denied"
    assert_aadsts(params["error_description"], 50105)
    params, _ = sign_in(browser, "lena.fischer@northwind.example")
    assert "code" in params


# -- consent ---------------------------------------------------------------------------

def test_consent_cancel(browser):
    params, _ = sign_in(browser, "lena.fischer@northwind.example", accept=False)
    assert params["error"] == "access_denied" and params["error_subcode"] == "cancel"
    assert params["state"] == "st-1"
    assert params["error_description"].startswith(
        "AADSTS65004: User declined to consent to access the app.")


def test_consent_is_remembered(browser):
    sign_in(browser, "lena.fischer@northwind.example")
    verifier, challenge = pkce()
    response = browser.get(authorize_path(challenge=challenge, prompt="login"))
    response = submit(browser, response, username="lena.fischer@northwind.example")
    assert "code" in callback(response)  # no consent page the second time


def test_prompt_consent_always_asks(browser):
    sign_in(browser, "lena.fischer@northwind.example")
    _, challenge = pkce()
    response = browser.get(authorize_path(challenge=challenge, prompt="consent"))
    assert page_kind(response) == "consent"
    assert "code" in callback(submit(browser, response, decision="accept"))


def test_prompt_none_needing_consent(browser):
    verifier, challenge = pkce()
    response = browser.get(authorize_path(challenge=challenge, prompt="login"))
    response = submit(browser, response, username="lena.fischer@northwind.example")
    assert page_kind(response) == "consent"
    params = callback(browser.get(authorize_path(challenge=challenge, prompt="none")))
    assert params["error"] == "consent_required"
    assert_aadsts(params["error_description"], 65001)


def test_admin_consent_on_behalf_skips_member_consent(emu, browser):
    verifier, challenge = pkce()
    response = browser.get(authorize_path(challenge=challenge,
                                          login_hint="admin@northwind.example"))
    response = submit(browser, response, username="admin@northwind.example")
    assert "Consent on behalf of your organization" in response.get_data(as_text=True)
    assert "code" in callback(submit(browser, response, decision="accept", on_behalf="yes"))
    assert emu.has_admin_consent(NW, CLIENT_ID) and not emu.has_admin_consent(FB, CLIENT_ID)
    params, _ = sign_in(browser, "omar.haddad@northwind.example", accept=None)
    assert "code" in params


def test_admin_consent_without_box_is_personal(emu, browser):
    sign_in(browser, "admin@northwind.example")
    assert not emu.has_admin_consent(NW, CLIENT_ID)


def test_users_may_not_consent(emu, browser):
    emu.set_tenant(NW, users_may_consent=False)
    verifier, challenge = pkce()
    response = browser.get(authorize_path(challenge=challenge))
    response = submit(browser, response, username="lena.fischer@northwind.example")
    assert page_kind(response) == "approval"
    assert "Need admin approval" in response.get_data(as_text=True)
    # Forging a consent POST does not get around the switch.
    forged = browser.post(form_of(response)[0], data={**form_of(response)[1],
                                                      "step": "consent", "decision": "accept"})
    assert page_kind(forged) == "approval"
    params = callback(submit(browser, response))
    assert params["error"] == "access_denied" and params["state"] == "st-1"
    assert_aadsts(params["error_description"], 90094)
    # An admin still gets the consent page with the organisation box.
    response = browser.get(authorize_path(challenge=challenge, prompt="login"))
    response = submit(browser, response, username="admin@northwind.example")
    assert page_kind(response) == "consent"
    assert "on behalf of your organization" in response.get_data(as_text=True)


# -- token endpoint ------------------------------------------------------------------

def test_token_response_shape(emu, http, browser):
    result = tokens_for(http, browser, "jun.park@northwind.example")
    assert result["token_type"] == "Bearer"
    assert result["scope"] == "User.Read profile openid email"
    assert result["expires_in"] == 3599 and result["ext_expires_in"] == 3599
    assert result["refresh_token"]
    user = emu.directory.user_by_upn("jun.park@northwind.example")
    info = json.loads(base64.urlsafe_b64decode(result["client_info"] + "=="))
    assert info == {"uid": user.oid, "utid": NW}
    claims = verify_id_token(http, result["id_token"], NW)
    assert claims["xms_edov"] is False and claims["email"] == "jun.park@partners.example"
    assert claims["nonce"] == "n-1" and claims["aud"] == CLIENT_ID
    for name in ("aio", "rh", "uti", "login_hint", "sub", "name"):
        assert claims[name]
    header = jwt.get_unverified_header(result["id_token"])
    assert header["typ"] == "JWT" and header["alg"] == "RS256"
    access = jwt.decode(result["access_token"], options={"verify_signature": False})
    assert access["aud"] == "00000003-0000-0000-c000-000000000000"
    assert access["iss"] == f"https://sts.windows.net/{NW}/"
    assert access["scp"] == "User.Read openid profile email" and access["oid"] == user.oid


def test_sub_is_pairwise_and_stable(http, browser):
    first = verify_id_token(http, tokens_for(http, browser)["id_token"])
    second = verify_id_token(http, tokens_for(http, browser)["id_token"])
    assert first["sub"] == second["sub"] != first["oid"]


def test_refresh_token_grant(http, browser):
    result = tokens_for(http, browser)
    response = http.post(TOKEN_URL, data={"grant_type": "refresh_token", "client_id": CLIENT_ID,
                                          "client_secret": SECRET,
                                          "refresh_token": result["refresh_token"]})
    assert response.status_code == 200 and response.json()["access_token"]


def test_token_unknown_client(http, browser):
    params, verifier = sign_in(browser, "lena.fischer@northwind.example")
    token_error(redeem(http, params["code"], verifier, client_id="nobody"),
                400, "unauthorized_client", 700016)


def test_token_bad_secret(http, browser):
    params, verifier = sign_in(browser, "lena.fischer@northwind.example")
    token_error(redeem(http, params["code"], verifier, client_secret="nope"),
                401, "invalid_client", 7000215)


def test_token_unknown_code(http):
    token_error(redeem(http, "made-up", "v"), 400, "invalid_grant", 70008)


def test_code_is_single_use(http, browser):
    params, verifier = sign_in(browser, "lena.fischer@northwind.example")
    assert redeem(http, params["code"], verifier).status_code == 200
    token_error(redeem(http, params["code"], verifier), 400, "invalid_grant", 54005)


def test_redirect_uri_mismatch_consumes_code(http, browser):
    params, verifier = sign_in(browser, "lena.fischer@northwind.example")
    token_error(redeem(http, params["code"], verifier, redirect_uri="http://localhost/other"),
                400, "invalid_grant", 500112)
    token_error(redeem(http, params["code"], verifier), 400, "invalid_grant", 54005)


def test_pkce_mismatch(http, browser):
    params, _ = sign_in(browser, "lena.fischer@northwind.example")
    token_error(redeem(http, params["code"], "wrong-verifier"), 400, "invalid_grant", 501481)


def test_code_expires_after_ten_minutes(emu, http, browser):
    params, verifier = sign_in(browser, "lena.fischer@northwind.example")
    emu.time_offset = 601
    token_error(redeem(http, params["code"], verifier), 400, "invalid_grant", 70008)


def test_unsupported_grant_type(http):
    response = http.post(TOKEN_URL, data={"grant_type": "password", "client_id": CLIENT_ID,
                                          "client_secret": SECRET})
    token_error(response, 400, "unsupported_grant_type", 70003)


# -- Graph ---------------------------------------------------------------------------

def test_graph_me_default_properties(emu, http, browser):
    result = tokens_for(http, browser)
    body = http.get("https://graph.microsoft.com/v1.0/me",
                    headers={"Authorization": f"Bearer {result['access_token']}"}).json()
    assert list(body) == ["@odata.context", "businessPhones", "displayName", "givenName",
                          "jobTitle", "mail", "mobilePhone", "officeLocation",
                          "preferredLanguage", "surname", "userPrincipalName", "id"]
    assert body["id"] == emu.directory.user_by_upn("lena.fischer@northwind.example").oid


def test_graph_select_without_id_and_unknown_property(http, browser):
    auth = {"Authorization": f"Bearer {tokens_for(http, browser)['access_token']}"}
    body = http.get("https://graph.microsoft.com/v1.0/me",
                    params={"$select": "mail,companyName,usageLocation"}, headers=auth).json()
    assert set(body) == {"@odata.context", "mail", "companyName", "usageLocation"}
    response = http.get("https://graph.microsoft.com/v1.0/me?$select=mail,shoeSize",
                        headers=auth)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "Request_BadRequest"


def test_graph_rejects_bad_tokens(emu, http, browser):
    result = tokens_for(http, browser)
    me = "https://graph.microsoft.com/v1.0/me"
    for headers in ({}, {"Authorization": "Bearer not-a-jwt"},
                    {"Authorization": f"Bearer {result['id_token']}"}):  # wrong audience
        response = http.get(me, headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "InvalidAuthenticationToken"
    emu.time_offset = 3600
    response = http.get(me, headers={"Authorization": f"Bearer {result['access_token']}"})
    assert response.status_code == 401


def test_graph_photo_missing(http, browser):
    result = tokens_for(http, browser, "omar.haddad@northwind.example")
    response = http.get("https://graph.microsoft.com/v1.0/me/photo/$value",
                        headers={"Authorization": f"Bearer {result['access_token']}"})
    assert response.status_code == 404
    assert response.json()["error"] == {"code": "ImageNotFound",
                                        "message": "The photo wasn't found."} | {
        "innerError": response.json()["error"]["innerError"]}


# -- logout ------------------------------------------------------------------------------

def test_logout_redirects_to_registered_origin_and_clears_session(browser):
    sign_in(browser, "lena.fischer@northwind.example")
    response = browser.get("/_entra/organizations/oauth2/v2.0/logout?" + urlencode(
        {"post_logout_redirect_uri": "http://localhost/signed-out",
         "logout_hint": "x"}))
    assert response.status_code == 302
    assert response.headers["Location"] == "http://localhost/signed-out"
    assert page_kind(browser.get(authorize_path())) == "signin"


def test_logout_to_foreign_origin_shows_page(browser):
    response = browser.get("/_entra/organizations/oauth2/v2.0/logout?" + urlencode(
        {"post_logout_redirect_uri": "https://evil.example/"}))
    assert response.status_code == 200
    assert "You signed out of your account" in response.get_data(as_text=True)


# -- admin consent -----------------------------------------------------------------------

def adminconsent_path(tenant=NW, **params):
    query = {"client_id": CLIENT_ID, "scope": "https://graph.microsoft.com/.default",
             "redirect_uri": REDIRECT, "state": "ac-1", **params}
    return f"/_entra/{tenant}/v2.0/adminconsent?" + urlencode(query)


def test_adminconsent_checks_client_and_redirect(browser):
    response = browser.get(adminconsent_path(client_id="nobody"))
    assert response.status_code == 400 and "AADSTS700016" in response.get_data(as_text=True)
    response = browser.get(adminconsent_path(redirect_uri="https://evil.example/"))
    assert response.status_code == 400 and "AADSTS50011" in response.get_data(as_text=True)


def test_adminconsent_by_member_is_refused(browser):
    response = browser.get(adminconsent_path())
    html = response.get_data(as_text=True)
    assert page_kind(response) == "signin" and "fabrikam.example" not in html
    params = callback(submit(browser, response, username="lena.fischer@northwind.example"))
    assert params["error"] == "access_denied" and params["admin_consent"] == "True"
    assert params["tenant"] == NW and params["state"] == "ac-1"
    assert_aadsts(params["error_description"], 90094)


def test_adminconsent_accept_then_immediate(emu, browser):
    response = submit(browser, browser.get(adminconsent_path()),
                      username="admin@northwind.example")
    assert page_kind(response) == "adminconsent"
    assert "Accept for your organization" in response.get_data(as_text=True)
    params = callback(submit(browser, response, decision="accept"))
    assert params == {"admin_consent": "True", "tenant": NW, "state": "ac-1",
                      "scope": "https://graph.microsoft.com/User.Read"}
    assert emu.has_admin_consent(NW, CLIENT_ID)
    assert callback(browser.get(adminconsent_path()))["admin_consent"] == "True"
    params, _ = sign_in(browser, "lena.fischer@northwind.example", accept=None, prompt="login")
    assert "code" in params  # members are asked nothing now


def test_adminconsent_cancel(emu, browser):
    response = submit(browser, browser.get(adminconsent_path()),
                      username="admin@northwind.example")
    params = callback(submit(browser, response, decision="cancel"))
    assert params["error"] == "consent_required" and params["admin_consent"] == "True"
    assert params["tenant"] == NW and params["state"] == "ac-1"
    assert_aadsts(params["error_description"], 65004)
    assert not emu.has_admin_consent(NW, CLIENT_ID)


# -- faults --------------------------------------------------------------------------

def test_fault_id_token_claims_and_header(emu, http, browser):
    emu.faults["id_token_claims"] = {"aud": "someone-else", "email": None}
    emu.faults["id_token_header"] = {"jku": "https://evil.example/keys", "kid": None}
    token = tokens_for(http, browser)["id_token"]
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["aud"] == "someone-else" and "email" not in claims
    header = jwt.get_unverified_header(token)
    assert header["jku"] == "https://evil.example/keys" and "kid" not in header


@pytest.mark.parametrize("alg", ["none", "HS256-public", "foreign-key", "unpublished-kid"])
def test_fault_id_token_alg(emu, http, browser, alg):
    emu.faults["id_token_alg"] = alg
    token = tokens_for(http, browser)["id_token"]
    header = jwt.get_unverified_header(token)
    keys = http.get(f"{LOGIN}/organizations/discovery/v2.0/keys").json()["keys"]
    current = keys[0]
    if alg == "none":
        assert header["alg"] == "none" and token.endswith(".")
    elif alg == "HS256-public":
        assert header["alg"] == "HS256"
        pem = jwt.PyJWK(current, "RS256").key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        signing_input, _, signature = token.rpartition(".")
        expected = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
        assert base64.urlsafe_b64encode(expected).rstrip(b"=").decode() == signature
    elif alg == "foreign-key":
        assert header["kid"] == current["kid"]
        with pytest.raises(jwt.InvalidSignatureError):
            jwt.decode(token, jwt.PyJWK(current, "RS256").key, algorithms=["RS256"],
                       audience=CLIENT_ID)
    else:
        assert header["kid"] not in {k["kid"] for k in keys}


def test_fault_token_response_consumes_code(emu, http, browser):
    params, verifier = sign_in(browser, "lena.fischer@northwind.example")
    emu.faults["token_response"] = (502, "<html>Bad gateway</html>", "text/html")
    response = redeem(http, params["code"], verifier)
    assert response.status_code == 502 and response.text == "<html>Bad gateway</html>"
    assert response.headers["Content-Type"].startswith("text/html")
    emu.faults.clear()
    token_error(redeem(http, params["code"], verifier), 400, "invalid_grant", 54005)


def test_fault_graph_me_and_status(emu, http, browser):
    auth = {"Authorization": f"Bearer {tokens_for(http, browser)['access_token']}"}
    emu.faults["graph_me"] = {"id": "00000000-0000-0000-0000-000000000000", "mail": None}
    body = http.get("https://graph.microsoft.com/v1.0/me", headers=auth).json()
    assert body["id"] == "00000000-0000-0000-0000-000000000000" and body["mail"] is None
    emu.faults["graph_status"] = 503
    assert http.get("https://graph.microsoft.com/v1.0/me", headers=auth).status_code == 503
    response = http.get("https://graph.microsoft.com/v1.0/me/photo/$value", headers=auth)
    assert response.status_code == 503


def test_fault_timeout(emu, http):
    emu.faults["timeout"] = {"graph.microsoft.com",
                             "login.microsoftonline.com/organizations/oauth2/v2.0/token"}
    with pytest.raises(requests.exceptions.ReadTimeout):
        http.get("https://graph.microsoft.com/v1.0/me", timeout=3)
    with pytest.raises(requests.exceptions.ReadTimeout):
        http.post(TOKEN_URL, data={})
    # Other URLs still answer, and every attempt is recorded with its timeout.
    assert http.get(f"{LOGIN}/organizations/discovery/v2.0/keys").status_code == 200
    assert emu.requests[0] == ("GET", "https://graph.microsoft.com/v1.0/me", 3)
    assert len(emu.requests) == 3


def test_fault_slow_answers_late_or_times_out_at_the_callers_timeout(emu, http):
    emu.faults["slow"] = {"login.microsoftonline.com/organizations/discovery": 0.3}
    started = time.monotonic()
    assert http.get(f"{LOGIN}/organizations/discovery/v2.0/keys", timeout=2).status_code == 200
    assert 0.3 <= time.monotonic() - started < 1.5
    started = time.monotonic()
    with pytest.raises(requests.exceptions.ReadTimeout):
        http.get(f"{LOGIN}/organizations/discovery/v2.0/keys", timeout=0.1)  # as a real socket: no longer
    assert 0.1 <= time.monotonic() - started < 1


def test_fault_discovery_and_jwks_extra_keys(emu, http):
    emu.faults["discovery"] = {"issuer": "https://evil.example/v2.0"}
    emu.faults["jwks_extra_keys"] = [{"kty": "oct", "kid": "extra", "k": "c2VjcmV0"}]
    doc = http.get(f"{LOGIN}/organizations/v2.0/.well-known/openid-configuration").json()
    assert doc["issuer"] == "https://evil.example/v2.0"
    keys = http.get(f"{LOGIN}/organizations/discovery/v2.0/keys").json()["keys"]
    assert keys[-1]["kid"] == "extra" and len(keys) == 2


# -- several processes on one instance folder ------------------------------------------

def test_two_emulators_share_state(tmp_path, seed):
    first = make_emulator(tmp_path / "shared", seed)
    second = make_emulator(tmp_path / "shared", seed)
    http1, http2 = first.mount(requests.Session()), second.mount(requests.Session())
    browser1 = Client(DispatcherMiddleware(NotFound(), {"/_entra": first.wsgi}))
    browser2 = Client(DispatcherMiddleware(NotFound(), {"/_entra": second.wsgi}))
    keys = lambda http: http.get(f"{LOGIN}/common/discovery/v2.0/keys").json()  # noqa: E731
    assert keys(http1) == keys(http2)
    assert first.secret_key == second.secret_key
    first.rotate_signing_key()
    assert keys(http1) == keys(http2) and len(keys(http2)["keys"]) == 2

    params, verifier = sign_in(browser1, "lena.fischer@northwind.example")
    assert redeem(http2, params["code"], verifier).status_code == 200
    token_error(redeem(http1, params["code"], verifier), 400, "invalid_grant", 54005)
    # Lena's consent, given through the first, is known to the second.
    params, _ = sign_in(browser2, "lena.fischer@northwind.example", accept=None)
    assert "code" in params
    second.set_tenant(FB, users_may_consent=False)
    assert first.tenant_settings(FB)["users_may_consent"] is False


def test_fresh_instance_folder_is_created(tmp_path):
    folder = tmp_path / "new" / "instance"
    emu = Emulator(str(folder), browser_url=BROWSER, clients=CLIENTS)
    assert (folder / "entra-emulator.sqlite").exists()
    assert len(emu.keys.jwks()["keys"]) == 1


def test_directory_demo_data(emu):
    directory = emu.directory
    assert [t.name for t in directory.tenants] == ["Northwind Traders", "Fabrikam Research"]
    assert directory.tenant("NORTHWIND.example").tid == NW
    for tenant in directory.tenants:
        assert [u.role for u in tenant.users].count("admin") == 1
        assert sum(u.photo is None for u in tenant.users) == 1
        for user in tenant.users:
            assert user.profile["userPrincipalName"] == user.upn
            if user.photo:
                assert user.photo.startswith(b"\x89PNG") and user.photo_type == "image/png"
    assert not directory.email_domain_verified(directory.user_by_upn("jun.park@northwind.example"))
    assert directory.email_domain_verified(directory.user_by_upn("priya.nair@fabrikam.example"))
    assert directory.user_by_upn("nobody@northwind.example") is None


def test_session_cookie_is_scoped_to_the_mount(browser):
    response = browser.get(authorize_path())
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith("entra_emulator_session=") and "Path=/_entra" in cookie
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie


def test_token_endpoint_unknown_tenant(http):
    response = http.post(f"{LOGIN}/nowhere.example/oauth2/v2.0/token", data={})
    token_error(response, 400, "invalid_tenant", 90002)


def test_static_stylesheet_is_served(browser):
    response = browser.get("/_entra/static/emulator.css")
    assert response.status_code == 200 and "text/css" in response.headers["Content-Type"]
