"""The callback under attack and in awkward hands: state tricks, replays, foreign codes, old flows, tabs, back."""
from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from helpers import csrf, sign_in_state, signed_in, start_sso, submit, through_microsoft
from models import LoginSession, db

LENA = "lena.fischer@northwind.example"


def _state_of(go) -> str:
    return parse_qs(urlsplit(go.headers["Location"]).query)["state"][0]


def _token_calls(emulator) -> int:
    return len([u for m, u, _ in emulator.requests if m == "POST" and u.endswith("/oauth2/v2.0/token")])


def _unredeemed_code(client, emulator) -> str:
    """A code Microsoft issued for a flow this browser then forgot (so the code is never redeemed)."""
    go = start_sso(client, LENA)
    with client.session_transaction() as s:
        s["flows"] = {}
    back = through_microsoft(client, go, user=LENA)
    assert back.status_code == 400
    return back.request.args["code"]


@pytest.mark.parametrize("query", [
    {"code": "abc"},                                        # no state
    {"code": "abc", "state": ""},                           # empty state
    {"code": "abc", "state": "x" * 5000},                   # oversized state
    {"code": "abc", "state": ["one", "two"]},               # duplicated state
    {"code": "abc", "state": "not-a-flow-of-this-browser"},
    {},
])
def test_callback_without_a_usable_state_asks_to_start_again(app, client, emulator, active, query):  # noqa: F811
    start_sso(client, LENA)  # a real pending flow that these answers must not reach
    emulator.requests.clear()
    before = sign_in_state(app)
    resp = client.get("/auth/callback", query_string=query)
    assert resp.status_code == 400 and b"Start again" in resp.data and b'href="/login"' in resp.data
    assert _token_calls(emulator) == 0 and sign_in_state(app) == before


def test_duplicated_state_with_the_real_value_is_refused_and_the_flow_survives(app, client, emulator, active):  # noqa: F811,E501
    go = start_sso(client, LENA)
    state = _state_of(go)
    emulator.requests.clear()
    resp = client.get("/auth/callback", query_string={"code": "abc", "state": [state, state]})
    assert resp.status_code == 400 and _token_calls(emulator) == 0
    assert through_microsoft(client, go, user=LENA).status_code == 303  # the genuine answer still works


def test_both_code_and_error_is_an_error_and_the_code_is_not_redeemed(app, client, emulator, active):  # noqa: F811
    code = _unredeemed_code(client, emulator)
    state = _state_of(start_sso(client, LENA))
    emulator.requests.clear()
    before = sign_in_state(app)
    resp = client.get("/auth/callback", query_string={
        "code": code, "state": state, "error": "access_denied", "error_description": "AADSTS65004: declined"})
    assert resp.status_code == 403 and b"Consent was declined" in resp.data
    assert _token_calls(emulator) == 0 and sign_in_state(app) == before and not signed_in(client)


def test_replayed_callback_never_reaches_the_token_endpoint(app, client, emulator, active):  # noqa: F811
    back = through_microsoft(client, start_sso(client, LENA), user=LENA)
    assert back.status_code == 303
    replay = back.request.url
    client.post("/logout", data={"csrf_token": csrf(client, "/")})
    emulator.requests.clear()
    before = sign_in_state(app)
    resp = client.get(replay)
    assert resp.status_code == 400 and b"Start again" in resp.data
    assert _token_calls(emulator) == 0 and sign_in_state(app) == before and not signed_in(client)


def test_failed_callback_consumes_the_flow_too(app, client, emulator, active):  # noqa: F811
    emulator.faults["id_token_alg"] = "foreign-key"
    back = through_microsoft(client, start_sso(client, LENA), user=LENA)
    assert back.status_code == 401
    emulator.faults.clear()
    emulator.requests.clear()
    assert client.get(back.request.url).status_code == 400 and _token_calls(emulator) == 0


def test_code_from_another_flow_fails_pkce(app, client, emulator, active):  # noqa: F811
    code = _unredeemed_code(client, emulator)
    other = app.test_client()  # the victim's browser, with its own pending flow
    state = _state_of(start_sso(other, LENA))
    before = sign_in_state(app)
    resp = other.get("/auth/callback", query_string={"code": code, "state": state})
    assert resp.status_code == 400 and b"AADSTS501481" in resp.data  # Microsoft refused the verifier
    assert sign_in_state(app) == before and not signed_in(other)


def test_callback_in_another_browser_is_refused(app, client, emulator, active):  # noqa: F811
    go = start_sso(client, LENA)
    with client.session_transaction() as s:
        s["flows"] = {}
    url = through_microsoft(client, go, user=LENA).request.url
    victim = app.test_client()
    victim.get("/login")
    emulator.requests.clear()
    resp = victim.get(url)  # login CSRF: an attacker's finished sign-in pushed into a victim's browser
    assert resp.status_code == 400 and not signed_in(victim) and _token_calls(emulator) == 0


def test_flow_older_than_ten_minutes_has_expired(app, client, emulator, active):  # noqa: F811
    go = start_sso(client, LENA)
    with client.session_transaction() as s:
        flows = s["flows"]
        for pending in flows.values():
            pending["started"] -= 601
        s["flows"] = flows
    emulator.requests.clear()
    resp = through_microsoft(client, go, user=LENA)
    assert resp.status_code == 400 and b"longer than 10 minutes" in resp.data
    assert _token_calls(emulator) == 0 and not signed_in(client)


def test_two_tabs_signing_in_at_once_both_work(app, client, emulator, active):  # noqa: F811
    tab_a = start_sso(client, LENA)
    tab_b = start_sso(client, LENA)
    assert through_microsoft(client, tab_a, user=LENA).status_code == 303
    assert through_microsoft(client, tab_b, user=LENA).status_code == 303
    assert signed_in(client)
    with app.app_context():  # the second sign-in replaced the first session, it did not add one
        assert db.session.scalar(db.select(db.func.count()).select_from(LoginSession)) == 1


def test_the_oldest_of_too_many_pending_flows_is_dropped(app, client, active):  # noqa: F811
    tabs = [start_sso(client, LENA) for _ in range(4)]
    assert through_microsoft(client, tabs[0], user=LENA).status_code == 400
    assert through_microsoft(client, tabs[3], user=LENA).status_code == 303


def test_back_button_after_sign_in_goes_where_the_sign_in_went(app, client, emulator, active):  # noqa: F811
    page = client.get("/login", query_string={"next": "/profile/"})
    assert b'value="/profile/"' in page.data
    go = submit(client, page, "Continue", fields={"email": LENA})
    if b"Continue to Microsoft" in go.data:
        go = submit(client, go, "Continue to Microsoft")
    back = through_microsoft(client, go, user=LENA)
    assert back.status_code == 303 and back.headers["Location"] == "/profile/"
    emulator.requests.clear()
    again = client.get(back.request.url)  # the browser's back button re-requests the callback
    assert again.status_code == 303 and again.headers["Location"] == "/profile/"
    assert again.headers["Cache-Control"] == "no-store" and _token_calls(emulator) == 0
    assert signed_in(client)  # and the sign-in that did finish still stands
    other = client.get("/auth/callback", query_string={"state": "a-sign-in-of-another-browser", "code": "x"})
    assert other.status_code == 303 and other.headers["Location"] == "/"  # signed in: home, not "Start again"
