"""Sign-in of provisioned users: linked by the bound tenant and object id (externalId), never by email; a
blocked one is refused; while a provisioned admin group is set, app roles do not change roles at sign-in."""
from __future__ import annotations

import html
import re

from domain import directory, members, policy, profiles, provisioning
from helpers import (FABRIKAM_TID, audit_outcomes, password_sign_in, provisioning_token, scim_group, scim_user,
                     sign_out, sso_sign_in, submit)
from models import Organization, StoredProfile, User, db

LENA = "lena.fischer@northwind.example"
LENA_OID = "1b7e2d63-8d2f-4e1c-8b68-4f3a2c9d5e02"


def _provisioned(app, org_id: int, email: str, external_id: str, *, role: str = "member",
                 blocked: bool = False) -> int:
    """Entra provisions the user through the endpoint (POST /Users); return their row id."""
    client = app.test_client()
    scim_id = scim_user(client, _token(app, org_id), email, external_id, active=not blocked,
                        displayName="Lena Fischer")
    with app.app_context():
        user = db.session.execute(db.select(User).where(User.scim_id == scim_id)).scalar_one()
        if role != user.role:
            members.set_role(user.organization, user, role, policy.OPERATOR)
        return user.id


def _token(app, org_id: int) -> str:
    """The organisation's provisioning token, made once per test's portal (generating again would rotate it)."""
    tokens = app.extensions.setdefault("test_scim_tokens", {})
    if org_id not in tokens:
        tokens[org_id] = provisioning_token(app, org_id)
    return tokens[org_id]


def _users(app, org_id: int) -> list[User]:
    with app.app_context():
        users = list(db.session.execute(db.select(User).where(User.organization_id == org_id)
                                        .order_by(User.id)).scalars())
        db.session.expunge_all()
        return users


def test_provisioned_user_is_linked_at_first_sign_in_by_object_id(app, client, active):
    lena = _provisioned(app, active, LENA, LENA_OID, role="admin")
    before = len(_users(app, active))
    admin = app.test_client()
    password_sign_in(admin, "admin@northwind.example")
    row = re.search(r"<tr>(?:(?!</tr>).)*" + re.escape(LENA) + r".*?</tr>", admin.get("/settings/users").data.decode(),
                    re.S).group(0)
    assert "Provisioned — not signed in yet" in row and "Managed by Microsoft Entra" in row
    assert ">Lena Fischer</td>" in row  # the name Entra sent, until a sign-in brings the profile

    home = sso_sign_in(client, LENA)
    assert home.status_code in (302, 303) and client.get("/profile/").status_code == 200
    users = _users(app, active)
    assert len(users) == before  # the same row, no second user
    linked = next(u for u in users if u.id == lena)
    assert (linked.tenant_id, linked.object_id, linked.role) == (
        "6f1c2d3e-4a5b-4c7d-8e9f-0a1b2c3d4e5f", LENA_OID, "admin")
    assert ("success", "provisioned_object_id", lena) in audit_outcomes(app, "identity_linked")
    # Now signed in: Active, still managed by Entra; an admin by the role provisioning gave.
    row = re.search(r"<tr>(?:(?!</tr>).)*" + re.escape(LENA) + r".*?</tr>", admin.get("/settings/users").data.decode(),
                    re.S).group(0)
    assert ">Active" in row and "Provisioned — not signed in yet" not in row and "Managed by Microsoft Entra" in row
    assert client.get("/settings/general").status_code == 200
    # A second sign-in finds them by (tid, oid).
    sign_out(client)
    sso_sign_in(client, LENA)
    assert len(_users(app, active)) == before


def test_entra_default_mapping_links_by_the_mail_alias_which_is_not_kept(app, client, active):
    # Entra's default mapping sends mailNickname as externalId; Graph's /me gives the same alias at sign-in.
    lena = _provisioned(app, active, LENA, "lena.fischer")
    before = len(_users(app, active))
    home = sso_sign_in(client, LENA)
    assert home.status_code in (302, 303) and client.get("/profile/").status_code == 200
    users = _users(app, active)
    assert len(users) == before  # linked: no second account
    assert next(u for u in users if u.id == lena).object_id == LENA_OID
    assert ("success", "provisioned_mail_nickname", lena) in audit_outcomes(app, "identity_linked")
    # The alias was read only to match: not in the stored copy, the download or the profile page.
    with app.app_context():
        claims = profiles.profile_of(db.session.get(User, lena)).claims
        assert claims["displayName"] == "Lena Fischer" and "mailNickname" not in claims
    assert b"mailNickname" not in submit(client, client.get("/profile/"), "Download my data").data
    assert b"mailNickname" not in client.get("/profile/").data
    admin = app.test_client()
    password_sign_in(admin, "admin@northwind.example")
    assert "matched by mail alias (mailNickname)" in admin.get("/settings/audit").data.decode()


def _refused_sign_in(app, client, active, caplog, reason: str, before: int):
    with caplog.at_level("INFO"):
        page = sso_sign_in(client, LENA)
    assert page.status_code == 403
    text = html.unescape(page.data.decode())
    assert "Your account could not be matched" in text and "provisions its users' accounts from Microsoft Entra" in text
    assert "Ask your organisation's administrator" in text and "externalId" in text
    assert client.get("/profile/").status_code in (302, 303)  # no session
    assert len(_users(app, active)) == before  # no second account
    assert audit_outcomes(app, "sign_in")[-1][:2] == ("failure", reason)
    logged = caplog.text
    assert "lena" not in logged.lower() and LENA_OID not in logged  # ids only


def test_an_unmatched_provisioned_user_is_refused_rather_than_given_a_second_account(app, client, active, caplog):
    # externalId mapped from something the sign-in does not carry; the email matches: refuse, never link by email.
    lena = _provisioned(app, active, LENA, "E-10442")
    before = len(_users(app, active))
    _refused_sign_in(app, client, active, caplog, "provisioned_not_matched", before)
    assert next(u for u in _users(app, active) if u.id == lena).object_id is None
    assert f"provisioned user(s) {lena} not matched" in caplog.text
    # With provisioning turned off the organisation is back to plain SSO: sign-in creates a Microsoft account.
    with app.app_context():
        provisioning.turn_off(db.session.get(Organization, active), policy.OPERATOR)
    assert sso_sign_in(client, LENA).status_code in (302, 303)
    users = _users(app, active)
    assert len(users) == before + 1 and next(u for u in users if u.id == lena).object_id is None


def test_several_matching_provisioned_users_link_none(app, client, active, caplog):
    by_oid = _provisioned(app, active, LENA, LENA_OID)
    by_alias = _provisioned(app, active, "l.fischer@northwind.example", "lena.fischer")
    before = len(_users(app, active))
    _refused_sign_in(app, client, active, caplog, "provisioned_ambiguous", before)
    users = {u.id: u for u in _users(app, active)}
    assert users[by_oid].object_id is None and users[by_alias].object_id is None
    assert f"several provisioned users ({by_oid}, {by_alias})" in caplog.text


def test_provisioned_user_of_another_organisation_is_not_linked(app, client, active):
    with app.app_context():
        fabrikam = directory.create_organization("Fabrikam Research", ["fabrikam.example"])
        fabrikam.tenant_id, fabrikam.sso_active = FABRIKAM_TID, True  # provisioning needs SSO on
        db.session.commit()
        other = fabrikam.id
    stranger = _provisioned(app, other, "lena@fabrikam.example", LENA_OID)
    sso_sign_in(client, LENA)
    assert next(u for u in _users(app, other) if u.id == stranger).object_id is None
    assert any(u.object_id == LENA_OID for u in _users(app, active))


def test_blocked_provisioned_user_is_refused_and_stays_unlinked(app, client, active):
    lena = _provisioned(app, active, LENA, LENA_OID, blocked=True)
    before = len(_users(app, active))
    page = sso_sign_in(client, LENA)
    assert page.status_code == 403 and b"Your account is blocked" in page.data
    assert client.get("/profile/").status_code in (302, 303)  # no session
    users = _users(app, active)
    assert len(users) == before
    assert next(u for u in users if u.id == lena).object_id is None
    assert audit_outcomes(app, "sign_in")[-1][:2] == ("failure", "blocked")
    with app.app_context():
        assert db.session.get(StoredProfile, lena) is None


def test_linked_provisioned_user_keeps_the_email_provisioning_gave_when_copies_are_off(app, client, active):
    lena = _provisioned(app, active, LENA, LENA_OID)
    with app.app_context():
        db.session.get(Organization, active).store_profiles = False
        db.session.commit()
    sso_sign_in(client, LENA)
    sign_out(client)  # the session's copy goes; the userName stays the provisioned user's email
    with app.app_context():
        user = db.session.get(User, lena)
        assert user.object_id == LENA_OID and directory.user_email(user) == LENA
        assert [u.id for u in directory.users_by_email(LENA)] == [lena]


def test_app_roles_do_not_change_roles_while_an_admin_group_is_set(app, client, active):
    lena = _provisioned(app, active, LENA, LENA_OID)
    with app.app_context():
        lena_scim = db.session.get(User, lena).scim_id
    group = scim_group(app.test_client(), _token(app, active), "Portal Admins", [lena_scim])
    with app.app_context():
        org = db.session.get(Organization, active)
        provisioning.set_admin_group(org, group, policy.OPERATOR)  # its members become admins at once
        members.set_admins_from_entra(org, True, policy.OPERATOR)
    # Lena holds no app role Portal.Admin: app roles would make her a member; the admin group keeps her an admin.
    sso_sign_in(client, LENA)
    assert next(u for u in _users(app, active) if u.id == lena).role == "admin"
    assert not [d for _, d, _ in audit_outcomes(app, "role_changed") if d.endswith("entra")]
    assert client.get("/settings/general").status_code == 200
    # The USERS tab does not say app roles decide (provisioning does), and its role buttons work.
    admin = app.test_client()
    password_sign_in(admin, "admin@northwind.example")
    users = admin.get("/settings/users")
    assert b'id="entra-note"' not in users.data and b" disabled aria-describedby" not in users.data
    security = admin.get("/settings/security").data.decode()
    assert "A provisioned group decides who is admin" in security
    sign_out(client)
    # Without the group the app roles decide again: no Portal.Admin, a member.
    with app.app_context():
        provisioning.set_admin_group(db.session.get(Organization, active), None, policy.OPERATOR)
    sso_sign_in(client, LENA)
    assert next(u for u in _users(app, active) if u.id == lena).role == "member"


def test_the_users_export_marks_provisioned_users(app, runner, active):
    import json

    lena = _provisioned(app, active, LENA, LENA_OID)
    result = runner.invoke(args=["users", "--org", "Northwind Traders"])
    assert result.exit_code == 0, result.output
    rows = {row["id"]: row for row in map(json.loads, result.output.splitlines())}
    assert (rows[lena]["provisioned"], rows[lena]["status"], rows[lena]["email"]) == (True, "provisioned", LENA)
    admin = next(r for r in rows.values() if r["email"] == "admin@northwind.example")
    assert (admin["provisioned"], admin["status"]) == (False, "active")


def test_entra_defaults_end_to_end_one_account_and_disabling_in_entra_reaches_it(app, client, emulator, active):
    """Entra's default mappings (externalId ← mailNickname): a cycle provisions Lena, her first Microsoft sign-in is
    linked to that row, and disabling her in Entra ends her session and keeps her out."""
    from emulator.transport import WSGIAdapter
    from helpers import NORTHWIND_TID

    loopback = lambda environ, start: app(dict(environ, REMOTE_ADDR="127.0.0.1"), start)  # noqa: E731
    emulator.provisioning_session.mount("https://portal.test/", WSGIAdapter(loopback))
    emulator.configure_provisioning(NORTHWIND_TID, tenant_url="https://portal.test/scim/v2", token=_token(app, active),
                                    external_id="mailNickname")
    emulator.set_tenant(NORTHWIND_TID, assigned=[LENA_OID])
    summary = emulator.provision(NORTHWIND_TID)
    assert summary["errors"] == [] and summary["users"]["created"] == 1
    [lena] = [u.id for u in _users(app, active) if u.scim_id is not None]
    before = len(_users(app, active))

    assert sso_sign_in(client, LENA).status_code in (302, 303)
    assert client.get("/profile/").status_code == 200
    users = _users(app, active)
    assert len(users) == before and next(u for u in users if u.id == lena).object_id == LENA_OID
    assert ("success", "provisioned_mail_nickname", lena) in audit_outcomes(app, "identity_linked")

    emulator.set_user_state(LENA_OID, "disabled")
    summary = emulator.provision(NORTHWIND_TID)
    assert summary["errors"] == [] and summary["users"]["disabled"] == 1
    assert client.get("/profile/").status_code in (302, 303)  # her live session ended at once
    # Even should Microsoft let her in again before the next cycle, the portal keeps her account blocked.
    emulator.set_user_state(LENA_OID, "enabled")
    page = sso_sign_in(client, LENA)
    assert page.status_code == 403 and b"Your account is blocked" in page.data
    assert len(_users(app, active)) == before
