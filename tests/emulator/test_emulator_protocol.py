"""The emulator's protocol endpoints (discovery, keys, token) and their faults, through MSAL and the back channel."""
import base64
import hashlib
import hmac
import json
import re

import jwt
import msal
import pytest
from cryptography.hazmat.primitives import serialization

from emulator_flows import (CLIENT_ID, SECRET, REDIRECT, BROWSER, LOGIN, TOKEN_URL, NW, FB, submit, callback,
                            page_kind, sign_in, redeem, tokens_for, verify_id_token, token_error)

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


def test_fault_discovery_and_jwks_extra_keys(emu, http):
    emu.faults["discovery"] = {"issuer": "https://evil.example/v2.0"}
    emu.faults["jwks_extra_keys"] = [{"kty": "oct", "kid": "extra", "k": "c2VjcmV0"}]
    doc = http.get(f"{LOGIN}/organizations/v2.0/.well-known/openid-configuration").json()
    assert doc["issuer"] == "https://evil.example/v2.0"
    keys = http.get(f"{LOGIN}/organizations/discovery/v2.0/keys").json()["keys"]
    assert keys[-1]["kid"] == "extra" and len(keys) == 2


def test_token_endpoint_unknown_tenant(http):
    response = http.post(f"{LOGIN}/nowhere.example/oauth2/v2.0/token", data={})
    token_error(response, 400, "invalid_tenant", 90002)
