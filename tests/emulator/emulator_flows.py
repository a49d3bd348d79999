"""What the emulator's tests share: the registered client, and helpers that act as the portal or a browser."""
import base64
import hashlib
import re
import secrets
import sqlite3
from html import unescape
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt

from emulator import Emulator

CLIENT_ID = "6a5e1f0c-3b2d-4c8e-9f7a-1d2c3b4a5e6f"
SECRET = "demo-secret"
REDIRECT = "http://localhost/auth/callback"
BROWSER = "http://localhost/_entra"
LOGIN = "https://login.microsoftonline.com"
TOKEN_URL = f"{LOGIN}/organizations/oauth2/v2.0/token"
NW = "6f1c2d3e-4a5b-4c7d-8e9f-0a1b2c3d4e5f"
FB = "b2e4d6f8-1a3c-4e5a-9b7d-c9e1f3a5b7d9"
FRONT_CHANNEL = "http://localhost/auth/front-channel-logout"
CLIENTS = {CLIENT_ID: {"secret": SECRET, "redirect_uris": [REDIRECT], "name": "Contoso Portal",
                       "front_channel_logout_url": FRONT_CHANNEL}}


def make_emulator(folder, seed_path):
    folder.mkdir(exist_ok=True)
    target = folder / "entra-emulator.sqlite"
    if not target.exists():
        with sqlite3.connect(seed_path) as src, sqlite3.connect(target) as dst:
            src.backup(dst)
    return Emulator(str(folder), browser_url=BROWSER, clients=CLIENTS)


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


def adminconsent_path(tenant=NW, **params):
    query = {"client_id": CLIENT_ID, "scope": "https://graph.microsoft.com/.default",
             "redirect_uri": REDIRECT, "state": "ac-1", **params}
    return f"/_entra/{tenant}/v2.0/adminconsent?" + urlencode(query)
