"""SSO enforcement: "Require single sign-on" refuses passwords for the organisation, except break-glass accounts."""
from __future__ import annotations

import logging
import re

import pytest

from domain import passwords
from helpers import PASSWORD, csrf, password_sign_in, sign_out, signed_in, submit
from models import AuditEvent, Organization, db

SAVE = "Save single sign-on requirement"


@pytest.fixture
def app_config():
    # Clients from many addresses reach the portal through one proxy, as the README deploys it (the demo portal
    # itself answers loopback peers only): their addresses come in X-Forwarded-For.
    return {"PROXY_FIX_X_FOR": 1}


@pytest.fixture
def people(app, runner, active):
    """A password member and a break-glass admin made with the CLI, besides the admin who activated SSO."""
    with app.app_context():
        passwords.create_local_user("omar.haddad@northwind.example", "Northwind Traders", PASSWORD, role="member")
    result = runner.invoke(args=["create-admin", "rescue@northwind.example", "--org", "Northwind Traders",
                                 "--password-stdin", "--break-glass"], input=PASSWORD + "\n")
    assert result.exit_code == 0, result.output
    return active


def _set(client, on: bool):
    return submit(client, client.get("/settings/security"), SAVE, checks={"require_sso": on})


def _required(app, org_id) -> bool:
    with app.app_context():
        return db.session.get(Organization, org_id).require_sso


def _events(app):
    with app.app_context():
        return [(e.outcome, e.detail) for e in db.session.execute(
            db.select(AuditEvent).where(AuditEvent.action == "require_sso").order_by(AuditEvent.id)).scalars()]


def test_required_refuses_passwords_except_break_glass(app, client, people):
    password_sign_in(client, "admin@northwind.example")
    page = client.get("/settings/security")
    assert b"Not required" in page.data and b"1</strong> break-glass account" in page.data
    assert _set(client, True).status_code == 303
    assert _required(app, people)
    assert b"Status: <strong class=\"status-on\">Required" in client.get("/settings/security").data
    sign_out(client)

    for email in ("omar.haddad@northwind.example", "admin@northwind.example"):
        resp = password_sign_in(client, email)
        assert resp.status_code == 403 and b"requires single sign-on" in resp.data, email
        assert not signed_in(client)
    wrong = password_sign_in(client, "omar.haddad@northwind.example", "not the password")
    assert wrong.status_code == 403 and b"requires single sign-on" in wrong.data

    assert password_sign_in(client, "rescue@northwind.example").status_code == 303
    assert signed_in(client)
    with app.app_context():
        refusals = db.session.execute(db.select(AuditEvent.detail).where(
            AuditEvent.action == "sign_in", AuditEvent.outcome == "failure")).scalars().all()
        assert refusals.count("sso_required") == 2 and refusals.count("bad_password") == 1


def test_required_answers_a_wrong_and_a_right_password_alike(app, client, people):
    password_sign_in(client, "admin@northwind.example")
    _set(client, True)
    sign_out(client)

    def answer(email, password):
        resp = password_sign_in(client, email, password)
        assert not signed_in(client)
        page = re.sub(rb'<input[^>]*name="csrf_token"[^>]*>', b"", resp.data).replace(email.encode(), b"EMAIL")
        return resp.status_code, page

    right = answer("omar.haddad@northwind.example", PASSWORD)
    assert right[0] == 403 and b"requires single sign-on" in right[1]
    assert answer("omar.haddad@northwind.example", "not the password") == right
    # A guess at the break-glass account, or at nobody, looks the same: only its right password gets in.
    assert answer("rescue@northwind.example", "not the password") == right
    assert answer("nobody.here@northwind.example", "not the password") == right


def test_break_glass_signs_in_from_a_new_address_while_someone_guesses(app, client, people):
    password_sign_in(client, "admin@northwind.example")
    _set(client, True)
    sign_out(client)
    app.config.update(RATELIMIT_SIGN_IN_PER_ACCOUNT="3 per minute")
    guesser = app.test_client()
    token = csrf(guesser)
    for i in range(3):  # three addresses guess until each is blocked for the account
        address = {"HTTP_X_FORWARDED_FOR": f"198.51.100.{i}"}
        codes = [guesser.post("/login/password", environ_base=address, data={
            "email": "rescue@northwind.example", "password": "a guess", "csrf_token": token}).status_code
            for _ in range(4)]
        assert codes == [403, 403, 403, 429]
    rescue = app.test_client()
    resp = rescue.post("/login/password", environ_base={"HTTP_X_FORWARDED_FOR": "203.0.113.5"}, data={
        "email": "rescue@northwind.example", "password": PASSWORD, "csrf_token": csrf(rescue)})
    assert resp.status_code == 303 and signed_in(rescue)


def test_turning_it_off_lets_passwords_in_again(app, client, people):
    password_sign_in(client, "rescue@northwind.example")
    _set(client, True)
    assert _set(client, False).status_code == 303
    assert not _required(app, people)
    sign_out(client)
    assert password_sign_in(client, "omar.haddad@northwind.example").status_code == 303
    assert [d for _, d in _events(app)] == ["on password_sessions_ended=0", "off"]


def test_turning_it_on_ends_other_password_sessions(app, client, people):
    member, rescue = app.test_client(), app.test_client()
    password_sign_in(member, "omar.haddad@northwind.example")
    password_sign_in(rescue, "rescue@northwind.example")
    password_sign_in(client, "admin@northwind.example")
    _set(client, True)
    assert not signed_in(member)  # signed in with a password before: out now
    assert signed_in(rescue)  # break-glass stays
    assert signed_in(client)  # the admin who turned it on keeps this session
    assert _events(app) == [("success", "on password_sessions_ended=1")]


def test_requiring_needs_sso_active(app, client, northwind):
    password_sign_in(client, "admin@northwind.example")
    page = client.get("/settings/security")
    assert b"Activate single sign-on first" in page.data and SAVE.encode() not in page.data
    resp = client.post("/settings/security/require-sso",
                       data={"require_sso": "y", "csrf_token": csrf(client, "/settings/security")})
    assert resp.status_code == 409 and b"Activate single sign-on first" in resp.data
    assert not _required(app, northwind)
    assert _events(app) == [("failure", "sso_not_active")]


def test_deactivating_sso_ends_the_requirement(app, client, people):
    password_sign_in(client, "admin@northwind.example")
    _set(client, True)
    submit(client, client.get("/settings/security"), "Deactivate SSO")
    assert not _required(app, people)
    sign_out(client)
    assert password_sign_in(client, "omar.haddad@northwind.example").status_code == 303


def test_saving_without_change_writes_no_event(app, client, people):
    password_sign_in(client, "admin@northwind.example")
    assert _set(client, False).status_code == 303
    assert _events(app) == []


def test_members_cannot_change_it_and_are_logged(app, client, people, caplog):
    password_sign_in(client, "omar.haddad@northwind.example")
    caplog.set_level(logging.WARNING)
    resp = client.post("/settings/security/require-sso", data={"require_sso": "y", "csrf_token": csrf(client, "/")})
    assert resp.status_code == 403 and not _required(app, people)
    assert any("refused on '/settings/security/require-sso'" in r.getMessage() for r in caplog.records)
    assert _events(app) == []


def test_change_needs_csrf_token(app, client, people):
    password_sign_in(client, "admin@northwind.example")
    resp = client.post("/settings/security/require-sso", data={"require_sso": "y"})
    assert resp.status_code == 400 and not _required(app, people)
