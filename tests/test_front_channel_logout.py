"""Front-channel logout: a sign-out at Microsoft ends the portal sessions of that Microsoft session, and only those."""
from __future__ import annotations

import re
import secrets
from html import unescape
from urllib.parse import parse_qs, urlencode, urlsplit

from app import create_app
from helpers import (FABRIKAM_TID, NORTHWIND_TID, PRODUCTION, dump_database, signed_in, sso_sign_in,
                     start_sso)
from models import LoginSession, db

LENA = "lena.fischer@northwind.example"
FCL = "/auth/front-channel-logout"
MICROSOFT_SIGN_OUT = "/_entra/organizations/oauth2/v2.0/logout"


def _browser_with(app, cookie: str):
    browser = app.test_client()
    browser.set_cookie("session", cookie, domain="portal.test")
    return browser


def _cookie(client) -> str:
    return client.get_cookie("session", domain="portal.test").value


def _frames(page) -> list[str]:
    """The front-channel logout URLs Microsoft's sign-out page loads (iframes, no script)."""
    assert page.status_code == 200
    return [unescape(src) for src in re.findall(r'<iframe[^>]* src="([^"]+)"', page.get_data(as_text=True))]


def test_sign_out_at_microsoft_ends_every_portal_session_of_that_microsoft_session(app, active):
    microsoft = app.test_client()  # one browser, one Microsoft session, two portal sessions (cookie lost between)
    sso_sign_in(microsoft, LENA)
    first = _cookie(microsoft)
    microsoft.delete_cookie("session", domain="portal.test")
    sso_sign_in(microsoft, LENA)
    second = _cookie(microsoft)
    elsewhere = app.test_client()  # the same user in another browser: another Microsoft session
    sso_sign_in(elsewhere, LENA)
    browsers = [_browser_with(app, first), _browser_with(app, second)]
    assert first != second and all(signed_in(b) for b in browsers) and signed_in(elsewhere)
    with app.app_context():
        hashes = [s.entra_sid_hash for s in db.session.execute(db.select(LoginSession)).scalars()]
    assert len(hashes) == 3 and len(set(hashes)) == 2 and None not in hashes

    [frame] = _frames(microsoft.get(MICROSOFT_SIGN_OUT))
    parts = urlsplit(frame)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == "http://portal.test" + FCL
    assert query["iss"] == f"https://login.microsoftonline.com/{NORTHWIND_TID}/v2.0" and query["sid"]
    iframe = app.test_client()  # third-party: no cookie reaches it
    answer = iframe.get(frame)
    assert answer.status_code == 200 and "Set-Cookie" not in answer.headers
    assert not any(signed_in(b) for b in browsers)
    assert signed_in(elsewhere)
    # Microsoft's session is over too: the next sign-in asks for the account again.
    assert b'name="step" value="signin"' in microsoft.get(start_sso(microsoft, LENA).headers["Location"]).data


def test_unknown_missing_or_foreign_sid_changes_nothing(app, active):
    browser = app.test_client()
    sso_sign_in(browser, LENA)
    [frame] = _frames(browser.get(MICROSOFT_SIGN_OUT))  # not loaded yet
    sid = parse_qs(urlsplit(frame).query)["sid"][0]
    before = dump_database(app)
    anyone = app.test_client()
    for query in ({}, {"sid": ""}, {"sid": secrets.token_urlsafe(16)}, {"sid": sid.upper()}, {"sid": sid * 20},
                  {"iss": f"https://login.microsoftonline.com/{NORTHWIND_TID}/v2.0"},
                  {"sid": sid, "iss": f"https://login.microsoftonline.com/{FABRIKAM_TID}/v2.0"},
                  {"sid": sid, "iss": f"https://evil.example/{NORTHWIND_TID}/v2.0"},
                  {"sid": sid, "iss": "not an issuer"}):
        answer = anyone.get(FCL + "?" + urlencode(query))
        assert answer.status_code == 200 and "Set-Cookie" not in answer.headers, query
    assert dump_database(app) == before and signed_in(browser)
    assert anyone.get(FCL + "?" + urlencode({"sid": sid})).status_code == 200  # without iss: the sid alone
    assert not signed_in(browser)


def test_the_route_needs_no_cookie_and_no_csrf_and_takes_no_post(app, active):
    browser = app.test_client()
    sso_sign_in(browser, LENA)
    [frame] = _frames(browser.get(MICROSOFT_SIGN_OUT))
    assert app.test_client().post(frame).status_code == 405
    assert signed_in(browser)
    assert browser.get(frame).status_code == 200  # the same browser's own cookie changes nothing either
    assert not signed_in(browser)


def test_only_microsoft_may_frame_the_front_channel_logout(client, tmp_path):
    page = client.get(FCL)
    assert page.status_code == 200 and page.headers["Cache-Control"] == "no-store"
    assert "frame-ancestors 'self';" in page.headers["Content-Security-Policy"]  # demo: the emulator is this origin
    assert "X-Frame-Options" not in page.headers
    for other in ("/login", "/no-such-page", "/healthz"):
        answer = client.get(other)
        assert "frame-ancestors 'none'" in answer.headers["Content-Security-Policy"], other
        assert answer.headers["X-Frame-Options"] == "DENY", other
    production = create_app(PRODUCTION, instance_path=str(tmp_path)).test_client()
    csp = production.get(FCL, base_url="https://portal.example.com").headers["Content-Security-Policy"]
    assert re.search(r"frame-ancestors ([^;]+);", csp).group(1) == "https://login.microsoftonline.com"
    login = production.get("/login", base_url="https://portal.example.com")
    assert "frame-ancestors 'none'" in login.headers["Content-Security-Policy"]
    assert login.headers["X-Frame-Options"] == "DENY"
