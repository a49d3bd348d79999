"""Sign-in throttles: per client IP and per account, on the login prompt, password step and callback; a 429 page."""
from __future__ import annotations

import logging

from helpers import csrf, password_sign_in
from test_sso import active  # noqa: F401  (shared fixture)

ADMIN = "admin@northwind.example"


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


def test_one_account_from_many_ips_is_limited_per_account(app, northwind):
    _low(app, per_ip="100 per minute")
    client = app.test_client()
    token = csrf(client)
    # Four client addresses, all loopback ones: the demo app answers no other computer.
    codes = [_wrong_password(client, ADMIN, token, environ_base={"REMOTE_ADDR": f"127.0.0.{i + 2}"}).status_code
             for i in range(4)]
    assert codes == [401, 401, 401, 429]


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
