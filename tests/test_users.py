"""Settings → USERS: the table, its pages and search, and every action through the real routes."""
from __future__ import annotations

import re

import pytest
from flask.testing import FlaskClient

import vault
from domain import directory, passwords
from helpers import (PASSWORD, csrf, database_bytes, forms, password_sign_in, sign_out, signed_in, sso_sign_in,
                     submit)
from models import AuditEvent, LoginSession, Organization, StoredProfile, User, db, utcnow


def _user_id(app, email: str) -> int:
    with app.app_context():
        return directory.users_by_email(email)[0].id


def _member(app, email: str = "member@northwind.example", **kwargs) -> int:
    with app.app_context():
        return passwords.create_local_user(email, "Northwind Traders", PASSWORD, role="member", **kwargs).id


def _client(app) -> FlaskClient:
    return app.test_client()


def _post(client, path: str, **data):
    return client.post(path, data={"csrf_token": csrf(client, "/settings/users"), **data})


def _press(client, page, button: str, action: str):
    """Press the button of the row whose form posts to `action` (a row has several forms), as a browser would."""
    for form in forms(page.data):
        if form["action"] == action and any(label == button for _, _, label in form["buttons"]):
            return client.post(action, data=dict(form["fields"]), follow_redirects=True)
    raise AssertionError(f"no {button!r} posting to {action} on the page")


def _events(app, action: str) -> list[tuple[str, str]]:
    with app.app_context():
        return [(e.outcome, e.detail) for e in db.session.execute(
            db.select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)).scalars()]


def _role(app, user_id: int) -> str:
    with app.app_context():
        return db.session.get(User, user_id).role


def test_users_tab_lists_the_organisation_for_admins_only(app, client, northwind):
    member_id = _member(app)
    password_sign_in(client, "admin@northwind.example")
    page = client.get("/settings/users")
    assert page.status_code == 200
    text = page.data.decode()
    assert 'aria-current="page">USERS</a>' in text
    assert "admin@northwind.example" in text and "member@northwind.example" in text
    assert "Active" in text and "password" in text and ">Make admin</button>" in text
    # The admin signed in, the member never did: the admin's row comes first.
    assert text.index("admin@northwind.example</td>") < text.index("member@northwind.example</td>")
    other = _client(app)
    password_sign_in(other, "member@northwind.example")
    assert other.get("/settings/users").status_code == 403
    assert other.post(f"/settings/users/{member_id}/role",
                      data={"csrf_token": csrf(other, "/"), "role": "admin"}).status_code == 403
    assert _role(app, member_id) == "member"


def test_pages_of_25_newest_sign_in_first_and_bad_pages_404(app, client, northwind):
    with app.app_context():
        org = db.session.get(Organization, northwind)
        v = vault.get_vault()
        for i in range(30):
            user = User(organization=org, role="member", email_hmac=v.blind_index(f"u{i}@northwind.example"),
                        email_enc=b"", last_sign_in_at=utcnow().replace(year=2020, minute=i % 60))
            db.session.add(user)
        db.session.commit()
    password_sign_in(client, "admin@northwind.example")
    first = client.get("/settings/users").data.decode()
    assert first.count("<tr>") == 26 and "Page 1 of 2" in first  # header row + 25
    second = client.get("/settings/users?page=2").data.decode()
    assert second.count("<tr>") == 7 and "Page 2 of 2" in second
    for bad in ("3", "0", "-1", "x", "²", "1.0", ""):
        assert client.get("/settings/users", query_string={"page": bad}).status_code == 404, bad


def test_find_by_email_is_exact(app, client, northwind):
    _member(app)
    _member(app, "membership@northwind.example")
    password_sign_in(client, "admin@northwind.example")
    found = client.get("/settings/users?email=Member@Northwind.example").data.decode()
    assert "member@northwind.example" in found and "membership@northwind.example" not in found
    assert "admin@northwind.example</td>" not in found
    assert "No user found" in client.get("/settings/users?email=membe@northwind.example").data.decode()
    assert client.get("/settings/users?email=@@@").status_code == 400


def test_make_admin_takes_effect_on_the_targets_next_request(app, client, northwind):
    member_id = _member(app)
    target = _client(app)
    password_sign_in(target, "member@northwind.example")
    assert target.get("/settings/general").status_code == 403
    password_sign_in(client, "admin@northwind.example")
    page = client.get("/settings/users")
    resp = _press(client, page, "Make admin", f"/settings/users/{member_id}/role")
    assert resp.status_code == 200 and b"is now an admin" in resp.data
    assert target.get("/settings/general").status_code == 200
    resp = _post(client, f"/settings/users/{member_id}/role", role="member")
    assert resp.status_code == 303
    assert target.get("/settings/general").status_code == 403
    assert [o for o, _ in _events(app, "role_changed")] == ["success", "success"]
    assert _events(app, "role_changed")[0][1] == f"user {member_id} member->admin"


def test_the_last_admin_stays(app, client, northwind):
    admin_id = _user_id(app, "admin@northwind.example")
    password_sign_in(client, "admin@northwind.example")
    for path, data in ((f"/settings/users/{admin_id}/role", {"role": "member"}),
                       (f"/settings/users/{admin_id}/block", {}), (f"/settings/users/{admin_id}/remove", {})):
        resp = _post(client, path, **data)
        assert resp.status_code == 409, path
        assert b"only active administrator" in resp.data
    assert _role(app, admin_id) == "admin" and signed_in(client)
    assert {d for _, d in _events(app, "role_changed") + _events(app, "user_blocked") + _events(app, "user_removed")
            } == {f"user {admin_id} last_admin"}
    # A blocked admin does not count: with a second, active admin, self-demotion works.
    second = _member(app, "second@northwind.example")
    _post(client, f"/settings/users/{second}/role", role="admin")
    assert _post(client, f"/settings/users/{admin_id}/role", role="member").status_code == 303
    assert client.get("/settings/users").status_code == 403  # no longer an admin


def test_a_blocked_admin_does_not_count_as_the_one_kept(app, client, northwind):
    second = _member(app, "second@northwind.example")
    admin_id = _user_id(app, "admin@northwind.example")
    password_sign_in(client, "admin@northwind.example")
    _post(client, f"/settings/users/{second}/role", role="admin")
    assert _post(client, f"/settings/users/{second}/block").status_code == 303
    assert _post(client, f"/settings/users/{admin_id}/role", role="member").status_code == 409


def test_block_ends_sessions_and_refuses_the_password_step(app, client, northwind):
    member_id = _member(app)
    phone, laptop = _client(app), _client(app)
    password_sign_in(phone, "member@northwind.example")
    password_sign_in(laptop, "member@northwind.example")
    password_sign_in(client, "admin@northwind.example")
    resp = _press(client, client.get("/settings/users"), "Block", f"/settings/users/{member_id}/block")
    assert b"2 sessions ended" in resp.data and b"Blocked" in resp.data
    assert not signed_in(phone) and not signed_in(laptop)
    with app.app_context():
        sessions_before = db.session.scalar(db.select(db.func.count()).select_from(LoginSession))
    refused = password_sign_in(phone, "member@northwind.example")
    assert refused.status_code == 403 and b"contact your organisation" in refused.data.lower()
    with app.app_context():
        assert db.session.scalar(db.select(db.func.count()).select_from(LoginSession)) == sessions_before
    assert ("failure", "blocked") in _events(app, "sign_in")
    # A wrong password says nothing about the block.
    wrong = password_sign_in(phone, "member@northwind.example", "not the right password at all")
    assert wrong.status_code == 401
    assert _post(client, f"/settings/users/{member_id}/unblock").status_code == 303
    assert password_sign_in(phone, "member@northwind.example").status_code == 303 and signed_in(phone)
    assert [a for a in ("user_blocked", "user_unblocked") if _events(app, a)] == ["user_blocked", "user_unblocked"]


def test_a_session_that_outlived_its_block_is_refused(app, client, northwind):
    # A sign-in that passed its blocked check just before the block was saved still created a session.
    member_id = _member(app)
    password_sign_in(client, "member@northwind.example")
    with app.app_context():
        db.session.execute(db.update(User).where(User.id == member_id).values(blocked=True))
        db.session.commit()
    resp = client.get("/profile/")
    assert resp.status_code == 302 and "/login" in resp.headers["Location"]


def test_a_blocked_microsoft_user_is_refused_at_the_callback(app, client, active):
    first = _client(app)
    sso_sign_in(first, "lena.fischer@northwind.example")
    lena = _user_id(app, "lena.fischer@northwind.example")
    password_sign_in(client, "admin@northwind.example")
    assert _post(client, f"/settings/users/{lena}/block").status_code == 303
    assert not signed_in(first)
    with app.app_context():
        before = (db.session.scalar(db.select(db.func.count()).select_from(LoginSession)),
                  db.session.get(User, lena).last_sign_in_at)
    again = sso_sign_in(_client(app), "lena.fischer@northwind.example")
    assert again.status_code == 403 and b"Your account is blocked" in again.data
    assert b"administrator" in again.data
    with app.app_context():
        assert (db.session.scalar(db.select(db.func.count()).select_from(LoginSession)),
                db.session.get(User, lena).last_sign_in_at) == before
    assert ("failure", "blocked") in _events(app, "sign_in")


def test_sign_out_everywhere(app, client, northwind):
    member_id = _member(app)
    target = _client(app)
    password_sign_in(target, "member@northwind.example")
    password_sign_in(client, "admin@northwind.example")
    resp = _press(client, client.get("/settings/users"), "Sign out everywhere", f"/settings/users/{member_id}/sign-out")
    assert b"signed out everywhere (1 session)" in resp.data
    assert not signed_in(target) and signed_in(client)
    assert _events(app, "signed_out_everywhere") == [("success", f"user {member_id} sessions_ended=1")]
    # The user may sign in again (not blocked).
    assert password_sign_in(target, "member@northwind.example").status_code == 303


def test_remove_leaves_nothing_of_the_user(app, client, active):
    lena_client = _client(app)
    sso_sign_in(lena_client, "lena.fischer@northwind.example")
    lena = _user_id(app, "lena.fischer@northwind.example")
    with app.app_context():
        user = db.session.get(User, lena)
        blobs = [user.email_enc, user.email_hmac] + list(db.session.execute(
            db.select(StoredProfile.data_enc, StoredProfile.photo_enc).where(StoredProfile.user_id == lena)).one())
    assert all(blobs) and all(b in database_bytes(app) for b in blobs)
    password_sign_in(client, "admin@northwind.example")
    confirm = client.get(f"/settings/users/{lena}/remove")
    assert confirm.status_code == 200
    assert b"becomes a new member" in confirm.data and b"block</strong> them instead" in confirm.data
    resp = submit(client, confirm, "Remove user", follow_redirects=True)
    assert resp.status_code == 200 and b"was removed" in resp.data
    assert not signed_in(lena_client)
    with app.app_context():
        assert db.session.get(User, lena) is None
        for model in (LoginSession, StoredProfile):
            assert not db.session.scalar(db.select(db.func.count()).select_from(model).where(model.user_id == lena))
        assert not db.session.scalar(db.select(db.func.count()).select_from(AuditEvent)
                                     .where(AuditEvent.actor_id == lena))
    data = database_bytes(app)
    for blob in blobs:
        assert blob not in data
    assert _events(app, "user_removed") == [("success", f"user {lena}")]
    # Signing in again with Microsoft makes a new member.
    sso_sign_in(lena_client, "lena.fischer@northwind.example")
    assert signed_in(lena_client) and _role(app, _user_id(app, "lena.fischer@northwind.example")) == "member"
    assert _events(app, "user_created") == [("success", "sso")] * 2  # a new account (SQLite may reuse the id)


def test_another_organisations_user_is_a_404_and_unchanged(app, client, northwind):
    with app.app_context():
        directory.create_organization("Fabrikam Research", ["fabrikam.example"])
        foreign = passwords.create_local_user("member@fabrikam.example", "Fabrikam Research", PASSWORD,
                                              role="member").id
    other = _client(app)
    password_sign_in(other, "member@fabrikam.example")
    password_sign_in(client, "admin@northwind.example")
    for path, data in (("role", {"role": "admin"}), ("block", {}), ("unblock", {}), ("sign-out", {}),
                       ("remove", {})):
        assert _post(client, f"/settings/users/{foreign}/{path}", **data).status_code == 404, path
    for path in (f"/settings/users/{foreign}/remove", "/settings/users/999999/remove", "/settings/users/x/remove"):
        assert client.get(path).status_code == 404
    with app.app_context():
        user = db.session.get(User, foreign)
        assert (user.role, user.blocked) == ("member", False)
    assert signed_in(other)


def test_actions_need_the_csrf_token(app, client, northwind):
    member_id = _member(app)
    password_sign_in(client, "admin@northwind.example")
    for path in ("role", "block", "sign-out", "remove"):
        assert client.post(f"/settings/users/{member_id}/{path}", data={"role": "admin"}).status_code == 400
    with app.app_context():
        assert db.session.get(User, member_id) is not None and _role(app, member_id) == "member"


def test_audit_log_names_the_actions(app, client, northwind):
    member_id = _member(app)
    password_sign_in(client, "admin@northwind.example")
    _post(client, f"/settings/users/{member_id}/role", role="admin")
    _post(client, f"/settings/users/{member_id}/block")
    _post(client, f"/settings/users/{member_id}/unblock")
    _post(client, f"/settings/users/{member_id}/sign-out")
    _post(client, f"/settings/users/{member_id}/remove")
    text = client.get("/settings/audit").data.decode()
    for words in ("Role changed", "User blocked", "User unblocked", "Signed out everywhere", "User removed"):
        assert words in text
    assert re.search(r"admin@northwind\.example</td>\s*<td data-label=\"Action\">User removed", text)


# -- Admins from Entra app roles ------------------------------------------------------------------------------

def _entra_admins(client, on: bool):
    page = client.get("/settings/security")
    return submit(client, page, "Save admin assignment", checks={"admins_from_entra": on}, follow_redirects=True)


def test_entra_app_roles_decide_admin_at_each_sign_in(app, client, active, emulator):
    password_sign_in(client, "admin@northwind.example")
    assert b"Admins are now assigned in Microsoft Entra" in _entra_admins(client, True).data
    with app.app_context():
        assert db.session.get(Organization, active).admins_from_entra
    lena_client = _client(app)
    sso_sign_in(lena_client, "lena.fischer@northwind.example")
    lena = _user_id(app, "lena.fischer@northwind.example")
    assert _role(app, lena) == "member" and lena_client.get("/settings/general").status_code == 403
    # The USERS tab cannot change a Microsoft user's role while Entra assigns them.
    users = client.get("/settings/users").data.decode()
    assert re.search(r'<button type="submit" disabled aria-describedby="entra-note">Make admin</button>', users)
    assert "Admins are assigned in Microsoft Entra" in users
    assert _post(client, f"/settings/users/{lena}/role", role="admin").status_code == 409
    emulator.assign_app_role("lena.fischer@northwind.example", "Portal.Admin")
    sign_out(lena_client)
    sso_sign_in(lena_client, "lena.fischer@northwind.example")
    assert _role(app, lena) == "admin" and lena_client.get("/settings/general").status_code == 200
    emulator.unassign_app_role("lena.fischer@northwind.example", "Portal.Admin")
    sign_out(lena_client)
    sso_sign_in(lena_client, "lena.fischer@northwind.example")
    assert _role(app, lena) == "member" and lena_client.get("/settings/general").status_code == 403
    assert [d for _, d in _events(app, "role_changed")][-2:] == [f"user {lena} member->admin entra",
                                                                  f"user {lena} admin->member entra"]
    # The local (password) admin keeps the role given here, and is still managed on the USERS tab.
    assert _role(app, _user_id(app, "admin@northwind.example")) == "admin"


def test_entra_app_roles_are_ignored_while_the_setting_is_off(app, client, active, emulator):
    emulator.assign_app_role("lena.fischer@northwind.example", "Portal.Admin")
    lena_client = _client(app)
    sso_sign_in(lena_client, "lena.fischer@northwind.example")
    lena = _user_id(app, "lena.fischer@northwind.example")
    assert _role(app, lena) == "member"
    password_sign_in(client, "admin@northwind.example")
    assert _post(client, f"/settings/users/{lena}/role", role="admin").status_code == 303
    emulator.unassign_app_role("lena.fischer@northwind.example", "Portal.Admin")
    sign_out(lena_client)
    sso_sign_in(lena_client, "lena.fischer@northwind.example")
    assert _role(app, lena) == "admin"


def test_the_last_admin_is_not_demoted_by_a_missing_role(app, client, active, emulator):
    # The admin signs in only with Microsoft (SSO required, not break-glass): the last admin who can sign in.
    emulator.faults["id_token_claims"] = {"roles": ["Portal.Admin"]}
    password_sign_in(client, "admin@northwind.example")
    _entra_admins(client, True)
    sign_out(client)
    sso_sign_in(client, "admin@northwind.example")
    admin_id = _user_id(app, "admin@northwind.example")
    with app.app_context():
        db.session.execute(db.update(User).where(User.id == admin_id).values(password_hash=None))
        db.session.commit()
    emulator.faults["id_token_claims"] = {"roles": None}
    sign_out(client)
    sso_sign_in(client, "admin@northwind.example")
    assert _role(app, admin_id) == "admin" and client.get("/settings/general").status_code == 200
    assert ("failure", f"user {admin_id} last_admin entra") in _events(app, "role_changed")


@pytest.mark.parametrize("on", [True, False])
def test_the_setting_is_audited(app, client, northwind, on):
    password_sign_in(client, "admin@northwind.example")
    if not on:
        _entra_admins(client, True)
    resp = _entra_admins(client, on)
    assert resp.status_code == 200 and (b"are now assigned in Microsoft" if on else b"on the USERS tab again") in resp.data
    assert _events(app, "admins_from_entra")[-1] == ("success", "on" if on else "off")
    status = re.search(r'entra-admins-heading.*?Status: <strong[^>]*>(\w+)<', resp.data.decode(), re.S).group(1)
    assert status == ("On" if on else "Off")
