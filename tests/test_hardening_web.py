"""Web front: open redirects, the Host header, proxies, security headers, CSRF on every POST, GETs change nothing."""
from __future__ import annotations

from urllib.parse import parse_qs, quote, urlsplit

import pytest

from app import create_app
from helpers import (PASSWORD, PRODUCTION, activate_sso, csrf, dump_database, password_sign_in, start_sso, submit,
                     through_microsoft)
from models import AuditEvent, db

ADMIN = "admin@northwind.example"
LENA = "lena.fischer@northwind.example"
CALLBACK = "http://portal.test/auth/callback"

HOSTILE_NEXT = [
    "//evil.example", "///evil.example", "/\\evil.example", "\\/evil.example", "https:evil.example",
    "https://evil.example/", "%2F%2Fevil.example", "/%2F/evil.example", "/%252F%252Fevil.example", "%5C%5Cevil",
    "/\tevil.example", "/\r\n/evil.example", "\t//evil.example", " //evil.example", "/%09/evil.example",
    "/%0d%0a/evil.example", "javascript:alert(1)", "JaVaScRiPt:alert(1)", "/\x00/evil", "data:text/html,hi",
    "//evil.example@portal.test", "evil.example", "", "/" + "a" * 600,
]


@pytest.mark.parametrize("target", HOSTILE_NEXT)
def test_hostile_next_falls_back_to_root(client, northwind, target):
    password_sign_in(client, ADMIN)
    resp = client.get("/login", query_string={"next": target})
    assert resp.status_code == 302 and resp.headers["Location"] == "/"


@pytest.mark.parametrize("target", ["/profile/", "/settings/security", "/profile/?tab=1"])
def test_same_site_next_is_kept(client, northwind, target):
    password_sign_in(client, ADMIN)
    assert client.get("/login", query_string={"next": target}).headers["Location"] == target


def test_hostile_next_posted_with_the_password_form_falls_back(client, northwind):
    page = client.get("/login/password")
    resp = submit(client, page, "Sign in", fields={"email": ADMIN, "password": __import__("helpers").PASSWORD,
                                                   "next": "//evil.example/steal"})
    assert resp.status_code == 303 and resp.headers["Location"] == "/"


def test_hostile_next_through_microsoft_falls_back(client, active):  # noqa: F811
    page = client.get("/login?next=" + quote("/\\evil.example"))
    go = submit(client, page, "Continue", fields={"email": LENA})
    if b"Continue to Microsoft" in go.data:
        go = submit(client, go, "Continue to Microsoft", fields={"next": "https:evil.example"})
    back = through_microsoft(client, go, user=LENA)
    assert back.status_code == 303 and back.headers["Location"] == "/"


def test_redirect_uri_and_sign_out_target_ignore_the_host_header(client, active):  # noqa: F811
    forged = {"X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "https"}
    token = csrf(client)
    client.set_cookie("session", client.get_cookie("session", domain="portal.test").value, domain="evil.example")
    resp = client.post("/auth/sso/start", data={"email": LENA, "csrf_token": token}, headers=forged,
                       base_url="http://evil.example")  # Continue to Microsoft, with the request's Host header
    assert resp.status_code == 303 and resp.request.host == "evil.example"
    query = parse_qs(urlsplit(resp.headers["Location"]).query)
    assert query["redirect_uri"] == [CALLBACK]
    client.set_cookie("session", client.get_cookie("session", domain="evil.example").value, domain="portal.test")
    assert through_microsoft(client, resp, user=LENA).status_code == 303
    token = csrf(client, "/")
    client.set_cookie("session", client.get_cookie("session", domain="portal.test").value, domain="evil.example")
    out = client.post("/logout", data={"csrf_token": token}, headers=forged, base_url="http://evil.example")
    assert out.request.host == "evil.example"
    assert parse_qs(urlsplit(out.headers["Location"]).query)["post_logout_redirect_uri"] == ["http://portal.test/login"]


def test_trusted_hosts_refuses_other_hosts(tmp_path):
    app = create_app({**PRODUCTION, "TRUSTED_HOSTS": ["portal.example.com"]}, instance_path=str(tmp_path))
    client = app.test_client()
    assert client.get("/login", base_url="https://portal.example.com").status_code == 200
    refused = client.get("/login", base_url="https://evil.example")
    assert refused.status_code == 400 and b"not served here" in refused.data


def _last_ip(app):
    with app.app_context():
        return db.session.execute(db.select(AuditEvent.ip).order_by(AuditEvent.id.desc())).scalar()


def test_forwarded_for_is_ignored_unless_proxy_fix_is_configured(app, client, northwind):
    client.post("/login/password", data={"email": ADMIN, "password": "wrong password!", "csrf_token": csrf(client)},
                headers={"X-Forwarded-For": "203.0.113.9"})
    assert _last_ip(app) == "127.0.0.1"


def test_proxy_fix_takes_the_client_ip_from_the_configured_proxy(tmp_path):
    from helpers import TEST_KEY
    from domain import directory
    app = create_app({"TESTING": True, "DEMO_MODE": True, "SERVER_NAME": "portal.test", "SECRET_KEY": "t" * 48,
                      "ENCRYPTION_KEYS": [TEST_KEY], "PROXY_FIX_X_FOR": 1, "PROXY_FIX_X_PROTO": 1},
                     instance_path=str(tmp_path))
    with app.app_context():
        directory.create_organization("Northwind Traders", ["northwind.example"])
    client = app.test_client()
    client.post("/login/password", data={"email": ADMIN, "password": "wrong password!", "csrf_token": csrf(client)},
                headers={"X-Forwarded-For": "198.51.100.1, 203.0.113.9", "X-Forwarded-Host": "evil.example"})
    assert _last_ip(app) == "203.0.113.9"  # the one proxy's view, not what the client claimed before it


# -- headers ------------------------------------------------------------------------------------

def _pages(client):
    """One response of each kind a browser sees: anonymous, signed in, error, callback error."""
    yield "login", client.get("/login")
    yield "not found", client.get("/nope")
    yield "callback", client.get("/auth/callback?state=x&code=y")
    password_sign_in(client, ADMIN)
    yield "home", client.get("/")
    yield "profile", client.get("/profile/")
    yield "settings", client.get("/settings/security")


def test_security_headers_on_every_page(client, northwind):
    for name, resp in _pages(client):
        h = resp.headers
        csp = h["Content-Security-Policy"]
        for part in ("default-src 'self'", "frame-ancestors 'none'", "form-action 'self'", "object-src 'none'"):
            assert part in csp, (name, csp)
        assert "unsafe-inline" not in csp and "script-src" not in csp  # scripts: 'self' only, none inline
        assert h["X-Content-Type-Options"] == "nosniff" and h["Referrer-Policy"] == "same-origin", name
        assert h["X-Frame-Options"] == "DENY", name
        assert h["Cache-Control"] == "no-store", name
        assert "Strict-Transport-Security" not in h  # demo mode is plain HTTP
        assert b"<script" not in resp.data and b" onclick=" not in resp.data and b" style=" not in resp.data


def test_static_files_may_be_cached(client):
    resp = client.get("/static/portal.css")
    assert resp.status_code == 200 and resp.headers.get("Cache-Control") != "no-store"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"


def test_hsts_and_microsoft_in_form_action_outside_demo(tmp_path):
    app = create_app(PRODUCTION, instance_path=str(tmp_path))
    resp = app.test_client().get("/login", base_url="https://portal.example.com")
    assert resp.headers["Strict-Transport-Security"].startswith("max-age=31536000")
    assert "form-action 'self' https://login.microsoftonline.com" in resp.headers["Content-Security-Policy"]


def test_emulator_pages_carry_security_headers(client, active):  # noqa: F811
    go = start_sso(client, LENA)
    page = client.get(go.headers["Location"])
    assert page.status_code == 200 and "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    assert page.headers["X-Frame-Options"] == "DENY" and page.headers["Cache-Control"] == "no-store"
    assert b"<script" not in page.data


# -- CSRF and safe methods ----------------------------------------------------------------------

def _routes(app, method):
    return sorted({r.rule for r in app.url_map.iter_rules() if method in r.methods and r.endpoint != "static"})


def test_every_post_needs_a_csrf_token(app, client, northwind):
    activate_sso(client)  # an admin, signed in with Microsoft, with SSO active: every POST is reachable
    # The SCIM endpoint takes no cookie, only its bearer token (tests/test_scim_protocol.py): nothing to forge.
    posts = [p for p in _routes(app, "POST") if not p.startswith("/scim/")]
    assert {"/login", "/login/password", "/auth/sso/start", "/logout", "/settings/security/sso/deactivate"} <= set(posts)
    before = dump_database(app)
    assert client.post("/scim/v2/Users", json={"userName": LENA}).status_code == 401  # the admin's cookie is no token
    for path in posts:
        for token in (None, "forged", csrf(app.test_client())):  # missing, made up, another browser's
            data = {"email": LENA, "password": "x" * 12} | ({"csrf_token": token} if token else {})
            resp = client.post(path, data=data)
            assert resp.status_code == 400 and b"Form expired" in resp.data, (path, token, resp.status_code)
    assert dump_database(app) == before
    assert client.get("/profile/").status_code == 200  # still signed in: /logout did nothing


def test_no_get_changes_state(app, client, northwind):
    activate_sso(client)
    before = dump_database(app)
    for path in _routes(app, "GET"):
        if path == "/auth/callback":
            continue  # changes state only with a pending flow's state; covered by the callback tests
        client.get(path.replace("<", "").replace(">", ""))
    assert dump_database(app) == before
    assert client.get("/profile/").status_code == 200


@pytest.mark.parametrize("origin", ["https://evil.example", "http://portal.test.evil.example", "null",
                                    "https://portal.test", "http://portal.test:8080"])
def test_a_post_from_another_origin_is_refused_even_with_a_token(app, client, northwind, origin):
    # Plain HTTP (demo mode): Flask-WTF checks no Referer here, the Origin check still holds.
    before = dump_database(app)
    resp = client.post("/login/password", data={"email": ADMIN, "password": PASSWORD, "csrf_token": csrf(client)},
                       headers={"Origin": origin})
    assert resp.status_code == 400 and b"Form expired" in resp.data
    assert dump_database(app) == before
    assert client.get("/profile/").status_code == 302  # not signed in


def test_a_post_with_this_origin_is_accepted(client, northwind):
    resp = client.post("/login/password", data={"email": ADMIN, "password": PASSWORD, "csrf_token": csrf(client)},
                       headers={"Origin": "http://portal.test"})
    assert resp.status_code == 303 and client.get("/profile/").status_code == 200


@pytest.mark.parametrize("headers", [
    {},  # no Referer: what every browser sent under the old Referrer-Policy: no-referrer
    {"Referer": "https://evil.example/login"},
    {"Referer": "http://portal.example.com/login"},  # a downgraded page
    {"Referer": "https://portal.example.com/login", "Origin": "null"},
    {"Referer": "https://portal.example.com/login", "Origin": "https://evil.example"},
])
def test_https_posts_need_a_same_origin_referer_and_origin(prod_app, headers):
    client = prod_app.test_client()
    https = "https://portal.example.com"
    token = csrf(client, https + "/login")
    resp = client.post(https + "/login/password", data={"email": ADMIN, "password": PASSWORD, "csrf_token": token},
                       headers=headers)
    assert resp.status_code == 400 and b"Form expired" in resp.data
    ok = client.post(https + "/login/password", data={"email": ADMIN, "password": PASSWORD, "csrf_token": token},
                     headers={"Referer": https + "/login", "Origin": https})
    assert ok.status_code == 303 and ok.headers["Location"] == "/"


def test_behind_a_tls_proxy_forms_need_proxy_fix_x_proto(prod_app, caplog):
    # nginx terminates TLS and talks plain HTTP to the portal: the browser's Origin is https.
    https = "https://portal.example.com"
    browser = {"Referer": https + "/login", "Origin": https, "X-Forwarded-Proto": "https"}
    plain = {"wsgi.url_scheme": "http"}  # what reaches the portal from the proxy
    client = prod_app.test_client()
    data = {"email": ADMIN, "password": PASSWORD, "csrf_token": csrf(client, https + "/login")}
    resp = client.post(https + "/login/password", data=data, headers=browser, environ_overrides=plain)
    assert resp.status_code == 400 and "PROXY_FIX_X_PROTO" in caplog.text

    keys = ("SECRET_KEY", "SERVER_NAME", "ENCRYPTION_KEYS", "ENTRA_CLIENT_ID", "ENTRA_CLIENT_SECRET",
            "SQLALCHEMY_DATABASE_URI")
    told = create_app({k: prod_app.config[k] for k in keys} | {"PROXY_FIX_X_PROTO": 1},
                      instance_path=prod_app.instance_path)
    client = told.test_client()
    data["csrf_token"] = csrf(client, https + "/login")
    resp = client.post(https + "/login/password", data=data, headers=browser, environ_overrides=plain)
    assert resp.status_code == 303 and resp.headers["Location"] == "/"
    with told.app_context():
        db.engine.dispose()
