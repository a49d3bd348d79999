"""Sessions: rotation at sign-in, cookie attributes, idle and absolute lifetime, server-side sign-out."""
from __future__ import annotations

from datetime import timedelta

from flask import session

from app import create_app
from helpers import PRODUCTION, csrf, password_sign_in, sign_out, signed_in, sso_sign_in, submit
from models import LoginSession, User, db, utcnow

ADMIN = "admin@northwind.example"
LENA = "lena.fischer@northwind.example"


def _cookie(client):
    return client.get_cookie("session", domain="portal.test").value


def test_sign_in_rotates_the_session_and_drops_pre_login_keys(client, northwind):
    client.get("/login")
    with client.session_transaction() as s:
        s["sid"] = "fixated-by-an-attacker"
        s["planted"] = "pre-login value"
    before = _cookie(client)
    assert password_sign_in(client, ADMIN).status_code == 303
    with client.session_transaction() as s:
        assert s["sid"] != "fixated-by-an-attacker" and "planted" not in s
    assert _cookie(client) != before and signed_in(client)


def test_sso_sign_in_drops_pre_login_keys(client, active):  # noqa: F811
    client.get("/login")
    with client.session_transaction() as s:
        s["planted"] = "pre-login value"
    sso_sign_in(client, LENA)
    with client.session_transaction() as s:
        assert "planted" not in s and isinstance(s.get("sid"), str)


def test_cookie_outside_demo_is_host_prefixed_secure_httponly_lax(tmp_path):
    app = create_app(PRODUCTION, instance_path=str(tmp_path))
    resp = app.test_client().get("/login", base_url="https://portal.example.com")
    cookie = resp.headers["Set-Cookie"]
    assert cookie.startswith("__Host-portal_session=")
    attrs = {a.strip().split("=")[0].lower() for a in cookie.split(";")[1:]}
    assert {"secure", "httponly", "samesite", "path"} <= attrs and "domain" not in attrs
    assert "SameSite=Lax" in cookie and "Path=/;" in cookie + ";"


def test_demo_cookie_is_httponly_and_lax(client):
    cookie = client.get("/login").headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie


def test_signed_in_cookie_lasts_the_absolute_lifetime_and_is_not_resent_on_page_views(app, client, northwind):
    resp = password_sign_in(client, ADMIN)
    expires = client.get_cookie("session", domain="portal.test").expires
    assert resp.status_code == 303 and expires is not None
    lifetime = expires.replace(tzinfo=None) - utcnow()
    assert timedelta(hours=7, minutes=59) < lifetime <= timedelta(hours=8)
    for _ in range(2):  # the CSRF secret came with the sign-in's cookie, so pages with forms do not change it
        page = client.get("/profile/")
        assert page.status_code == 200 and "Set-Cookie" not in page.headers
    assert sign_out(client).status_code in (302, 303) and not signed_in(client)  # the server-side row decides


def _age_session(app, **ago):
    with app.app_context():
        row = db.session.execute(db.select(LoginSession)).scalar_one()
        for column, delta in ago.items():
            setattr(row, column, utcnow() - delta)
        db.session.commit()


def _rows(app) -> int:
    with app.app_context():
        return db.session.scalar(db.select(db.func.count()).select_from(LoginSession))


def test_idle_timeout_ends_the_session(app, client, northwind):
    password_sign_in(client, ADMIN)
    _age_session(app, last_seen_at=timedelta(minutes=31), created_at=timedelta(minutes=40))
    assert client.get("/profile/").status_code == 302
    assert _rows(app) == 0


def test_activity_within_the_idle_timeout_keeps_the_session(app, client, northwind):
    password_sign_in(client, ADMIN)
    _age_session(app, last_seen_at=timedelta(minutes=29), created_at=timedelta(hours=7, minutes=59))
    assert signed_in(client)


def test_absolute_lifetime_ends_an_active_session(app, client, northwind):
    password_sign_in(client, ADMIN)
    _age_session(app, last_seen_at=timedelta(seconds=5), created_at=timedelta(hours=8, minutes=1))
    assert not signed_in(client) and _rows(app) == 0


def test_timeouts_are_configurable(app, client, northwind):
    app.config.update(SESSION_IDLE_MINUTES=5, SESSION_MAX_HOURS=1)
    password_sign_in(client, ADMIN)
    _age_session(app, last_seen_at=timedelta(minutes=6))
    assert not signed_in(client)
    password_sign_in(client, ADMIN)
    _age_session(app, created_at=timedelta(minutes=61))
    assert not signed_in(client)


def test_copied_cookie_replayed_after_sign_out_is_refused(app, client, northwind):
    password_sign_in(client, ADMIN)
    stolen = _cookie(client)
    sign_out(client)
    thief = app.test_client()
    thief.set_cookie("session", stolen, domain="portal.test")
    assert thief.get("/profile/").status_code == 302
    assert thief.get("/settings/security").status_code == 302


def test_deactivating_sso_ends_the_organisations_sso_sessions(app, active):  # noqa: F811
    member = app.test_client()
    sso_sign_in(member, LENA)
    admin = app.test_client()
    password_sign_in(admin, ADMIN)
    assert signed_in(member)
    submit(admin, admin.get("/settings/security"), "Deactivate SSO")
    assert not signed_in(member)  # the member's copy of the cookie is worthless now
    assert signed_in(admin)  # the password session that did it goes on


def test_sign_out_is_a_post_with_csrf(client, northwind):
    password_sign_in(client, ADMIN)
    assert client.get("/logout").status_code == 405
    assert client.post("/logout").status_code == 400
    assert signed_in(client)
    assert client.post("/logout", data={"csrf_token": csrf(client, "/")}).status_code == 303
    assert not signed_in(client)


def test_pending_flows_keep_the_cookie_under_4kb(client, active):  # noqa: F811
    """The cookie carries at most three pending flows; the longest allowed `next` keeps it under 4 kB."""
    from urllib.parse import quote
    long_next = "/profile/" + "a" * 500
    sizes = []
    for _ in range(5):
        page = client.get("/login?next=" + quote(long_next))
        resp = submit(client, page, "Continue", fields={"email": LENA})
        if b"Continue to Microsoft" in resp.data:
            resp = submit(client, resp, "Continue to Microsoft")
        assert resp.status_code == 303
        sizes.append(len(resp.headers["Set-Cookie"]))
    assert max(sizes) < 4096 and sizes[-1] > sizes[0]  # it grew with the flows, and stayed within bounds


def test_a_user_removed_between_the_session_check_and_the_page_is_signed_out_not_an_error(app, client, northwind,
                                                                                             monkeypatch):
    from domain import members, sessions

    password_sign_in(client, ADMIN)
    read = sessions.user_of

    def removed_meanwhile(signed_in):  # another worker removes the user after this request's session check
        members.erase(db.session.get(User, signed_in.id))
        db.session.commit()
        return read(signed_in)

    monkeypatch.setattr(sessions, "user_of", removed_meanwhile)
    resp = client.get("/settings/security")
    assert resp.status_code == 302 and "/login" in resp.headers["Location"]
    monkeypatch.setattr(sessions, "user_of", read)
    assert not signed_in(client)


def test_flask_logins_session_protection_still_runs_when_configured(app):
    manager = app.login_manager
    with app.test_request_context("/", headers={"User-Agent": "another browser"}):
        session["_id"] = "the identifier of the browser that signed in"
        assert manager._session_protection_failed() is False  # off by default: checked server-side instead
        app.config["SESSION_PROTECTION"] = "strong"
        try:
            assert manager._session_protection_failed() is True
        finally:
            del app.config["SESSION_PROTECTION"]
