"""The sign-in throttles and the SCIM endpoint's limit count in the database: every worker and host together,
exactly, also under a burst."""
from __future__ import annotations

import time

import pytest

from domain import sessions
from app import ConfigError, create_app
from helpers import TEST_KEY, all_at_once, csrf
from models import RateCount, SignInHit, db
from scim_client import ScimClient

ADMIN = "admin@northwind.example"


def _second_instance(app, database_uri):
    """Another portal process on the same database, instance folder and secrets (as a second worker would be)."""
    config = {"TESTING": True, "DEMO_MODE": True, "SERVER_NAME": "portal.test", "SECRET_KEY": "t" * 48,
              "ENCRYPTION_KEYS": [TEST_KEY]}
    if database_uri:
        config["SQLALCHEMY_DATABASE_URI"] = database_uri
    return create_app(config, instance_path=app.instance_path)


def _low(*apps, per_ip="100 per minute", per_account="3 per minute"):
    for a in apps:
        a.config.update(RATELIMIT_SIGN_IN_PER_IP=per_ip, RATELIMIT_SIGN_IN_PER_ACCOUNT=per_account)


def _guess(client, token, email=ADMIN):
    return client.post("/login/password", data={"email": email, "password": "wrong password!", "csrf_token": token})


def test_two_instances_share_the_counters(app, northwind, database_uri):
    other = _second_instance(app, database_uri)
    try:
        _low(app, other)
        first, second = app.test_client(), other.test_client()
        one, two = csrf(first), csrf(second)
        assert [_guess(first, one).status_code for _ in range(3)] == [401] * 3
        resp = _guess(second, two)  # the other worker knows about the three guesses
        assert resp.status_code == 429 and int(resp.headers["Retry-After"]) > 0
        assert _guess(first, one).status_code == 429
    finally:
        with other.app_context():
            db.engine.dispose()


def test_the_rate_limit_headers_show_what_every_worker_counted(app, northwind, database_uri):
    other = _second_instance(app, database_uri)
    try:
        _low(app, other, per_ip="5 per minute; 100 per hour")
        browsers = [app.test_client(), other.test_client()]
        tokens = [csrf(b) for b in browsers]
        started = time.time()
        answers = [browsers[n % 2].post("/login", data={"email": "someone@example.org", "csrf_token": tokens[n % 2]})
                   for n in range(6)]
        assert [a.status_code for a in answers] == [200] * 5 + [429]
        assert [a.headers["X-RateLimit-Limit"] for a in answers] == ["5"] * 6
        assert [a.headers["X-RateLimit-Remaining"] for a in answers] == ["4", "3", "2", "1", "0", "0"]
        # The minute runs from the first request, whichever worker counted it.
        resets = {int(a.headers["X-RateLimit-Reset"]) for a in answers}
        assert len(resets) == 1 and started + 59 <= resets.pop() <= time.time() + 61
    finally:
        with other.app_context():
            db.engine.dispose()


def test_a_burst_of_parallel_guesses_cannot_slip_under_the_limit(app, northwind):
    _low(app, per_account="5 per minute")
    browsers = [app.test_client() for _ in range(16)]
    tokens = [csrf(b) for b in browsers]
    answers = all_at_once([lambda b=b, t=t: _guess(b, t).status_code for b, t in zip(browsers, tokens)])
    assert sorted(answers) == [401] * 5 + [429] * 11


def test_counted_requests_hold_no_email_or_address_and_expired_ones_are_swept(app, northwind):
    _low(app)
    client = app.test_client()
    token = csrf(client)
    assert _guess(client, token).status_code == 401
    with app.app_context():
        keys = db.session.scalars(db.select(SignInHit.key)).all()
        # Neither the email nor the client address (the test client's 127.0.0.1) is kept, only keyed hashes.
        assert keys and not any(part in k.lower() for k in keys for part in ("northwind", "admin", "127.0.0.1"))
        live = len(keys)
        db.session.add(SignInHit(key="LIMITER/old", at=time.time() - 7200, expires_at=time.time() - 3600))
        db.session.commit()
        sessions.sweep_sessions()
        left = db.session.scalars(db.select(SignInHit.key)).all()
        assert len(left) == live and "LIMITER/old" not in left
    assert _guess(client, token).status_code == 401  # the live counts still count: 2 of 3
    assert _guess(client, token).status_code == 401
    assert _guess(client, token).status_code == 429


def test_the_database_counters_refuse_a_fixed_window_at_start_up(tmp_path):
    with pytest.raises(ConfigError, match="moving-window"):
        create_app({"TESTING": True, "DEMO_MODE": True, "SECRET_KEY": "t" * 48, "ENCRYPTION_KEYS": [TEST_KEY],
                    "RATELIMIT_STRATEGY": "fixed-window"}, instance_path=str(tmp_path))


def test_scim_counts_once_per_token_for_every_worker_and_expired_counts_are_swept(app, scim, database_uri):
    other = _second_instance(app, database_uri)
    try:
        for a in (app, other):
            a.config["RATELIMIT_SCIM"] = "5 per minute"
        elsewhere = ScimClient(other.test_client(), scim.token)
        answers = [c.get("/Users") for c in (scim, elsewhere) * 3]
        assert [a.status_code for a in answers] == [200] * 5 + [429]  # the other worker knows about the first's
        assert [a.headers["X-RateLimit-Remaining"] for a in answers] == ["4", "3", "2", "1", "0", "0"]
        assert 0 < int(answers[-1].headers["Retry-After"]) <= 60
        with app.app_context():
            # One count for the token (kept as its SHA-256, never the token), not a row per request.
            (key,) = db.session.scalars(db.select(RateCount.key)).all()
            assert key.startswith("LIMITER/scim-token:") and scim.token not in key
            assert not any("scim" in k for k in db.session.scalars(db.select(SignInHit.key)))
            db.session.execute(db.update(RateCount).values(expires_at=time.time() - 1))  # its minute has passed
            db.session.commit()
        assert scim.get("/Users").status_code == 200  # a new window
        with app.app_context():
            db.session.add(RateCount(key="LIMITER/old", count=7, expires_at=time.time() - 3600))
            db.session.commit()
            sessions.sweep_sessions()
            assert db.session.scalars(db.select(RateCount.key)).all() == [key]
    finally:
        with other.app_context():
            db.engine.dispose()


def test_a_burst_of_parallel_scim_requests_cannot_slip_under_the_limit(app, scim):
    app.config["RATELIMIT_SCIM"] = "5 per minute"
    clients = [ScimClient(app.test_client(), scim.token) for _ in range(16)]
    answers = all_at_once([lambda c=c: c.get("/ServiceProviderConfig").status_code for c in clients])
    assert sorted(answers) == [200] * 5 + [429] * 11
