"""Sign-out (end-session): one `sid` per Microsoft browser session, and front-channel logout of the session's apps."""
import re
from html import unescape
from urllib.parse import parse_qs, urlencode, urlsplit

from werkzeug.exceptions import NotFound
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.test import Client

from emulator import Emulator
from emulator_flows import (BROWSER, CLIENTS, CLIENT_ID, FRONT_CHANNEL, LOGIN, NW, REDIRECT, SECRET, authorize_path,
                            make_emulator, page_kind, submit, tokens_for, verify_id_token)

SIGN_OUT = "/_entra/organizations/oauth2/v2.0/logout"


def sid_of(http, browser, upn="lena.fischer@northwind.example"):
    return verify_id_token(http, tokens_for(http, browser, upn)["id_token"])["sid"]


def frames(response):
    return [unescape(s) for s in re.findall(r'<iframe[^>]* src="([^"]+)"', response.get_data(as_text=True))]


def test_one_sid_per_microsoft_browser_session(emu, http, browser):
    first = sid_of(http, browser)
    assert sid_of(http, browser) == first  # signed in already: the same session
    other = Client(DispatcherMiddleware(NotFound(), {"/_entra": emu.wsgi}))
    assert sid_of(http, other) != first
    browser.get(SIGN_OUT)
    assert sid_of(http, browser) != first  # a new Microsoft session


def test_sign_out_frames_the_front_channel_logout_url_of_the_sessions_app(emu, http, browser):
    sid = sid_of(http, browser)
    response = browser.get(SIGN_OUT)
    [frame] = frames(response)
    parts = urlsplit(frame)
    assert frame.startswith(FRONT_CHANNEL + "?")
    assert parse_qs(parts.query) == {"sid": [sid], "iss": [f"{LOGIN}/{NW}/v2.0"]}
    html = response.get_data(as_text=True)
    assert "You signed out of your account" in html and "<script" not in html
    assert "frame-src http://localhost" in response.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
    # The Microsoft session is over: no frames a second time, and the next sign-in asks for the account.
    assert frames(browser.get(SIGN_OUT)) == []
    assert page_kind(browser.get(authorize_path())) == "signin"


def test_a_browser_that_signed_in_to_no_app_gets_no_frames(browser):
    response = browser.get(SIGN_OUT)
    assert response.status_code == 200 and frames(response) == []
    assert "frame-src" not in response.headers["Content-Security-Policy"]


def test_the_app_asking_for_sign_out_is_sent_back_and_the_others_framed(tmp_path, seed):
    other_id, other_redirect = "7b6f2e1d-4c3e-4d9f-8a1b-2e3d4c5b6a7f", "https://crm.example/signin-oidc"
    make_emulator(tmp_path / "instance", seed)  # copies the seeded key
    emu = Emulator(str(tmp_path / "instance"), browser_url=BROWSER, clients={
        **CLIENTS, other_id: {"secret": SECRET, "redirect_uris": [other_redirect], "name": "CRM",
                              "front_channel_logout_url": "https://crm.example/signout-oidc"}})
    browser = Client(DispatcherMiddleware(NotFound(), {"/_entra": emu.wsgi}))
    for client_id, redirect_uri in ((CLIENT_ID, REDIRECT), (other_id, other_redirect)):
        response = browser.get(authorize_path(client_id=client_id, redirect_uri=redirect_uri,
                                              login_hint="lena.fischer@northwind.example"))
        if page_kind(response) == "signin":
            response = submit(browser, response, username="lena.fischer@northwind.example")
        if page_kind(response) == "consent":
            response = submit(browser, response, decision="accept")
        assert response.status_code == 302 and response.headers["Location"].startswith(redirect_uri)
    response = browser.get(SIGN_OUT + "?" + urlencode({"post_logout_redirect_uri": "http://localhost/login"}))
    [frame] = frames(response)
    assert frame.startswith("https://crm.example/signout-oidc?sid=")
    assert 'href="http://localhost/login"' in response.get_data(as_text=True)
    assert "frame-src https://crm.example" in response.headers["Content-Security-Policy"]
