"""The login prompt and the password step, including hostile input."""
from __future__ import annotations

import pytest

from helpers import PASSWORD, csrf, password_sign_in, submit
from models import AuditEvent, LoginSession, User, db


def test_login_prompt_has_one_email_field_and_continue(client):
    page = client.get("/login")
    assert page.status_code == 200
    assert b'name="email"' in page.data and b">Continue</button>" in page.data


def test_local_account_signs_in_with_right_password(client, northwind):
    resp = password_sign_in(client, "Admin@Northwind.Example")
    assert resp.status_code == 303 and resp.headers["Location"] == "/"
    home = client.get("/")
    assert b"admin@northwind.example" in home.data


@pytest.mark.parametrize("email,password", [
    ("admin@northwind.example", "wrong password!"),
    ("nobody@northwind.example", PASSWORD),
    ("someone@unknown.example", PASSWORD),
])
def test_wrong_password_and_unknown_users_get_the_same_answer(app, client, northwind, email, password):
    resp = password_sign_in(client, email, password)
    assert resp.status_code == 401
    assert b"The email or password is not right." in resp.data
    assert client.get("/").status_code == 302  # still signed out
    with app.app_context():
        assert db.session.scalar(db.select(db.func.count()).select_from(LoginSession)) == 0


def test_known_and_unknown_domains_answer_alike(client, northwind):
    known = client.post("/login", data={"email": "x@northwind.example", "csrf_token": csrf(client)})
    unknown = client.post("/login", data={"email": "x@elsewhere.example", "csrf_token": csrf(client)})
    assert known.status_code == unknown.status_code == 200
    assert known.data.replace(b"northwind", b"elsewhere").split(b'csrf_token')[0] == \
        unknown.data.split(b'csrf_token')[0]


@pytest.mark.parametrize("email", ["a" * 10_000, "a@b@c", "admin@northwind.example\r\nX-Injected: 1",
                                   "\u202eadmin@northwind.example", "", "   ", "admin@", "@northwind.example",
                                   "ad min@northwind.example", "admin@north wind.example", "admin@-bad-.example"])
def test_hostile_emails_get_a_clear_400_and_change_nothing(app, client, northwind, email):
    with app.app_context():
        users_before = db.session.scalar(db.select(db.func.count()).select_from(User))
    resp = client.post("/login", data={"email": email, "csrf_token": csrf(client)})
    assert resp.status_code == 400
    assert b"enter" in resp.data.lower()  # tells the user what to do
    with app.app_context():
        assert db.session.scalar(db.select(db.func.count()).select_from(User)) == users_before


def test_unicode_domain_is_normalised(client, app):
    from domain import directory, passwords
    with app.app_context():
        directory.create_organization("Bücher", ["bücher.example"])
        passwords.create_local_user("ada@xn--bcher-kva.example", "Bücher", PASSWORD)
    assert password_sign_in(client, "ada@BÜCHER.example").status_code == 303


def test_login_without_csrf_token_is_refused(client, northwind):
    resp = client.post("/login", data={"email": "admin@northwind.example"})
    assert resp.status_code == 400 and b"Form expired" in resp.data


def test_failed_sign_in_is_audited_without_the_password(app, client, northwind):
    password_sign_in(client, "admin@northwind.example", "wrong password!")
    with app.app_context():
        event = db.session.execute(db.select(AuditEvent)).scalar_one()
        assert (event.action, event.outcome, event.detail) == ("sign_in", "failure", "bad_password")


@pytest.mark.parametrize("target,expected", [
    ("/profile/", "/profile/"), ("/settings/security?x=1", "/settings/security?x=1"),
    ("https://evil.example/", "/"), ("//evil.example", "/"), ("/\\evil.example", "/"), ("https:evil", "/"),
    ("%2F%2Fevil.example", "/"), ("/%2F/evil.example", "/"), ("/\tevil", "/"), ("javascript:alert(1)", "/"),
])
def test_next_returns_to_same_site_paths_only(client, northwind, target, expected):
    page = client.get("/login", query_string={"next": target})
    step = client.post("/login", data={"email": "admin@northwind.example", "next": page.data.decode().split(
        'name="next" type="hidden" value="')[1].split('"')[0], "csrf_token": csrf(client)})
    resp = submit(client, step, "Sign in", fields={"password": PASSWORD})
    assert resp.status_code == 303
    assert resp.headers["Location"] == expected


def test_sign_out_is_a_post_and_ends_the_session(client, northwind):
    password_sign_in(client, "admin@northwind.example")
    home = client.get("/")
    resp = submit(client, home, "Sign out")
    assert resp.status_code == 303
    assert client.get("/").status_code == 302


def test_copied_cookie_is_refused_after_sign_out(app, northwind):
    first = app.test_client()
    password_sign_in(first, "admin@northwind.example")
    cookie = first.get_cookie("session", domain="portal.test").value
    submit(first, first.get("/"), "Sign out")
    thief = app.test_client()
    thief.set_cookie("session", cookie, domain="portal.test")
    assert thief.get("/settings/security").status_code == 302  # back to the login prompt
