"""Sign-in throttles: per client IP and per account, on the login prompt, password step and callback; a 429 page."""
from __future__ import annotations

import logging

import pytest

from helpers import PASSWORD, csrf, password_sign_in, sign_out, sso_sign_in

ADMIN = "admin@northwind.example"


@pytest.fixture
def app_config():
    # Clients from many addresses reach the portal through one proxy, as the README deploys it (the demo portal
    # itself answers loopback peers only): their addresses come in X-Forwarded-For.
    return {"PROXY_FIX_X_FOR": 1}


def _low(app, per_ip="6 per minute", per_account="3 per minute"):
    app.config.update(RATELIMIT_SIGN_IN_PER_IP=per_ip, RATELIMIT_SIGN_IN_PER_ACCOUNT=per_account)


def _wrong_password(client, email, token, **kwargs):
    return client.post("/login/password", data={"email": email, "password": "wrong password!", "csrf_token": token},
                       **kwargs)


def test_password_guessing_on_one_account_gets_429(app, client, northwind, caplog):
    _low(app)
    token = csrf(client)
    assert [_wrong_password(client, ADMIN, token).status_code for _ in range(3)] == [401, 401, 401]
    with caplog.at_level(logging.INFO):
        resp = _wrong_password(client, "Admin@Northwind.Example.", token)  # the same account, spelt otherwise
    assert resp.status_code == 429 and b"Too many attempts" in resp.data and b"Error 429" in resp.data
    assert int(resp.headers["Retry-After"]) > 0 and resp.headers["Cache-Control"] == "no-store"
    assert "northwind" not in caplog.text.lower()  # no personal data in what the limiter logs
    # The right password does not get through either while the account is throttled.
    assert password_sign_in(client, ADMIN).status_code == 429


def test_other_accounts_from_the_same_ip_are_limited_per_ip(app, client, northwind):
    _low(app)
    token = csrf(client)
    codes = [_wrong_password(client, f"user{i}@northwind.example", token).status_code for i in range(7)]
    assert codes == [401] * 6 + [429]


def test_failed_checks_block_the_guessing_client_not_the_account(app, northwind):
    _low(app, per_ip="100 per minute")
    client = app.test_client()
    token = csrf(client)
    guesser = {"HTTP_X_FORWARDED_FOR": "198.51.100.7"}
    codes = [_wrong_password(client, ADMIN, token, environ_base=guesser).status_code for _ in range(4)]
    assert codes == [401, 401, 401, 429]
    # The guessing address stays blocked for this account, even with the right password...
    right = {"email": ADMIN, "password": PASSWORD, "csrf_token": token}
    assert client.post("/login/password", data=right, environ_base=guesser).status_code == 429
    # ...while the owner, from another address, signs in.
    owner = app.test_client()
    resp = owner.post("/login/password", data={**right, "csrf_token": csrf(owner)},
                      environ_base={"HTTP_X_FORWARDED_FOR": "203.0.113.9"})
    assert resp.status_code == 303


def test_strangers_without_a_token_cannot_lock_an_account_out(app, northwind):
    _low(app, per_ip="100 per minute")
    stranger = app.test_client()
    for i in range(10):  # ten addresses, ten junk posts each, naming the admin, no CSRF token
        address = {"HTTP_X_FORWARDED_FOR": f"198.51.100.{i}"}
        for _ in range(10):
            assert stranger.post("/login", data={"email": ADMIN}, environ_base=address).status_code == 400
            assert stranger.post("/login/password", data={"email": ADMIN, "password": "x"},
                                 environ_base=address).status_code == 400
    admin = app.test_client()
    token = csrf(admin)
    resp = admin.post("/login/password", data={"email": ADMIN, "password": PASSWORD, "csrf_token": token},
                      environ_base={"HTTP_X_FORWARDED_FOR": "203.0.113.9"})
    assert resp.status_code == 303


def test_the_login_prompt_does_not_count_per_account(app, client, northwind):
    _low(app, per_ip="100 per minute")
    token = csrf(client)
    for _ in range(10):
        assert client.post("/login", data={"email": ADMIN, "csrf_token": token}).status_code == 200
    assert _wrong_password(client, ADMIN, token).status_code == 401  # the prompt used none of the 3 checks
    assert password_sign_in(client, ADMIN).status_code == 303


def test_a_successful_sign_in_clears_that_clients_failures(app, client, northwind):
    _low(app, per_ip="100 per minute")
    token = csrf(client)
    assert [_wrong_password(client, ADMIN, token).status_code for _ in range(2)] == [401, 401]
    assert password_sign_in(client, ADMIN).status_code == 303
    sign_out(client)
    token = csrf(client)
    assert [_wrong_password(client, ADMIN, token).status_code for _ in range(4)] == [401, 401, 401, 429]


def test_ipv6_clients_share_one_budget_per_64(app, northwind):
    _low(app, per_ip="3 per minute", per_account="100 per minute")
    client = app.test_client()
    token = csrf(client)

    def prompt(address):
        return client.post("/login", data={"email": "x@unknown.example", "csrf_token": token},
                           environ_base={"HTTP_X_FORWARDED_FOR": address}).status_code

    # Three addresses of one /64 (one home or one host's privacy addresses) share one budget...
    assert [prompt(f"2001:db8:1:2::{i:x}") for i in range(1, 5)] == [200, 200, 200, 429]
    assert prompt("2001:db8:1:2:ffff:ffff:ffff:ffff") == 429
    # ...another /64 has its own.
    assert prompt("2001:db8:1:3::1") == 200


def test_password_steps_have_their_own_smaller_budget_per_ip(app, client, northwind):
    app.config.update(RATELIMIT_SIGN_IN_PER_IP="100 per minute", RATELIMIT_PASSWORD_PER_IP="3 per minute")
    token = csrf(client)
    codes = [_wrong_password(client, f"user{i}@northwind.example", token).status_code for i in range(4)]
    assert codes == [401, 401, 401, 429]
    assert client.post("/login", data={"email": "x@unknown.example", "csrf_token": token}).status_code == 200


def test_login_prompt_is_limited_but_showing_the_form_is_not(app, client, northwind):
    _low(app, per_ip="3 per minute")
    token = csrf(client)
    for _ in range(3):
        assert client.post("/login", data={"email": "x@unknown.example", "csrf_token": token}).status_code == 200
    assert client.post("/login", data={"email": "y@unknown.example", "csrf_token": token}).status_code == 429
    assert client.get("/login").status_code == 200  # reading the page costs nothing


def test_requests_with_a_bad_csrf_token_count_too(app, client, northwind):
    _low(app, per_ip="2 per minute")
    assert [client.post("/login", data={"email": "a@b.example"}).status_code for _ in range(3)] == [400, 400, 429]


def test_callbacks_are_limited(app, client, active):  # noqa: F811
    _low(app, per_ip="3 per minute")
    codes = [client.get("/auth/callback", query_string={"state": f"s{i}", "code": "c"}).status_code
             for i in range(4)]
    assert codes == [400, 400, 400, 429]


def test_limits_can_be_switched_off_at_start_up(tmp_path):
    from app import create_app
    from helpers import TEST_KEY
    app = create_app({"TESTING": True, "DEMO_MODE": True, "SERVER_NAME": "portal.test", "SECRET_KEY": "t" * 48,
                      "ENCRYPTION_KEYS": [TEST_KEY], "RATELIMIT_ENABLED": False,
                      "RATELIMIT_SIGN_IN_PER_IP": "1 per minute"}, instance_path=str(tmp_path))
    client = app.test_client()
    assert {client.post("/login", data={"email": "a@b.example"}).status_code for _ in range(3)} == {400}


def test_two_hundred_colleagues_behind_one_nat_sign_in_with_the_defaults(app, active):  # noqa: F811
    # The default limits; every browser comes from the one address of the company's NAT (the test client's).
    members = ["lena.fischer@northwind.example", "omar.haddad@northwind.example", "jun.park@northwind.example"]
    refused = []
    for i in range(200):
        colleague = app.test_client()
        back = sso_sign_in(colleague, members[i % len(members)])
        if back.status_code != 303 or colleague.get("/profile/").status_code != 200:
            refused.append((i, back.status_code))
    assert refused == []
