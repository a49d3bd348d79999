"""Someone who signed in with Microsoft before provisioning was turned on, in an organisation that keeps no profile
copies and with Entra's default mapping (externalId ← mailNickname): the portal holds neither their email nor their
alias, so Entra's POST makes a second, provisioned account. Their next sign-in merges it into theirs: one account,
governed by Entra."""
from __future__ import annotations

from domain import directory, members, passwords, policy, profiles, provisioning
from helpers import (NORTHWIND_TID, PASSWORD, audit_outcomes, password_sign_in, provisioning_token, scim_call,
                     scim_group, scim_user, sign_out, sso_sign_in)
from models import Organization, ScimGroupMember, User, db

LENA = "lena.fischer@northwind.example"
LENA_OID = "1b7e2d63-8d2f-4e1c-8b68-4f3a2c9d5e02"
ALIAS = "lena.fischer"  # her mailNickname, Entra's default externalId


def _copies_off(app, org_id: int) -> None:
    with app.app_context():
        profiles.set_store_profiles(db.session.get(Organization, org_id), False, policy.OPERATOR)


def _signed_in_before_provisioning(app, active) -> int:
    """Copies off; Lena signs in with Microsoft (a browser left signed in is returned by the caller's client)."""
    _copies_off(app, active)
    early = app.test_client()
    assert sso_sign_in(early, LENA).status_code in (302, 303)
    with app.app_context():
        lena = db.session.execute(db.select(User).where(User.object_id == LENA_OID)).scalar_one()
        assert lena.scim_id is None and lena.email_enc == b""  # the portal holds no email of her
        app.extensions["test_early_client"] = early
        return lena.id


def _rows(app, org_id: int) -> dict[int, User]:
    with app.app_context():
        users = {u.id: u for u in db.session.execute(db.select(User).where(User.organization_id == org_id)).scalars()}
        db.session.expunge_all()
        return users


def _scim_row(app, scim_id: str) -> int:
    with app.app_context():
        return db.session.execute(db.select(User.id).where(User.scim_id == scim_id)).scalar_one()


def test_entra_cycle_second_account_is_merged_at_sign_in_and_disabling_in_entra_reaches_it(app, client, emulator,
                                                                                              active, caplog):
    from emulator.transport import WSGIAdapter

    lena = _signed_in_before_provisioning(app, active)
    token = provisioning_token(app, active)
    loopback = lambda environ, start: app(dict(environ, REMOTE_ADDR="127.0.0.1"), start)  # noqa: E731
    emulator.provisioning_session.mount("https://portal.test/", WSGIAdapter(loopback))
    emulator.configure_provisioning(NORTHWIND_TID, tenant_url="https://portal.test/scim/v2", token=token,
                                    external_id="mailNickname")
    emulator.set_tenant(NORTHWIND_TID, assigned=[LENA_OID])
    summary = emulator.provision(NORTHWIND_TID)
    assert summary["errors"] == [] and summary["users"]["created"] == 1
    [second] = [u.id for u in _rows(app, active).values() if u.scim_id is not None]
    assert second != lena  # the hole: a second account that her sign-ins do not reach
    before = len(_rows(app, active))

    with caplog.at_level("INFO"):
        assert sso_sign_in(client, LENA).status_code in (302, 303)
    assert client.get("/profile/").status_code == 200
    users = _rows(app, active)
    assert len(users) == before - 1 and second not in users  # one account: hers, now provisioned and linked
    assert users[lena].scim_id is not None and users[lena].object_id == LENA_OID
    assert ("success", "provisioned_user_merged", lena) in audit_outcomes(app, "identity_linked")
    assert f"Provisioned user {second} merged into user {lena}" in caplog.text and ALIAS not in caplog.text
    with app.app_context():
        assert directory.user_email(db.session.get(User, lena)) == LENA  # userName, the provisioned email
        status = provisioning.status(db.session.get(Organization, active))
        assert (status.users, status.not_linked) == (1, 0)
    # Entra's next cycle finds her by userName: nothing created, no error.
    summary = emulator.provision(NORTHWIND_TID)
    assert summary["errors"] == [] and summary["users"]["created"] == 0
    admin = app.test_client()
    password_sign_in(admin, "admin@northwind.example")
    assert "the account provisioned for them merged into theirs" in admin.get("/settings/audit").data.decode()

    emulator.set_user_state(LENA_OID, "disabled")
    summary = emulator.provision(NORTHWIND_TID)
    assert summary["errors"] == [] and summary["users"]["disabled"] == 1
    assert client.get("/profile/").status_code in (302, 303)  # her live session ended at once
    assert app.extensions["test_early_client"].get("/profile/").status_code in (302, 303)
    emulator.set_user_state(LENA_OID, "enabled")  # Microsoft would let her in; the portal does not
    page = sso_sign_in(client, LENA)
    assert page.status_code == 403 and b"Your account is blocked" in page.data
    assert len(_rows(app, active)) == before - 1


def test_the_merged_account_takes_the_group_memberships_and_the_admin_group_promotes_it(app, client, active):
    lena = _signed_in_before_provisioning(app, active)
    token = provisioning_token(app, active)
    scim_id = scim_user(app.test_client(), token, LENA, ALIAS, displayName="Lena Fischer")
    second = _scim_row(app, scim_id)
    group = scim_group(app.test_client(), token, "Portal Admins", [scim_id])
    with app.app_context():
        provisioning.set_admin_group(db.session.get(Organization, active), group, policy.OPERATOR)
    assert _rows(app, active)[second].role == "admin"
    assert _rows(app, active)[lena].role == "member"

    sso_sign_in(client, LENA)
    users = _rows(app, active)
    assert second not in users and (users[lena].scim_id, users[lena].role) == (scim_id, "admin")
    assert client.get("/settings/general").status_code == 200  # an admin now
    members_of = scim_call(app.test_client(), token, "GET", f"Groups/{group}").get_json()["members"]
    assert [m["value"] for m in members_of] == [scim_id]
    with app.app_context():
        assert db.session.execute(db.select(ScimGroupMember.user_id)).scalars().all() == [lena]
    # Entra governs the merged account by the id it knows: active false blocks her, her session ends.
    patch = {"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
             "Operations": [{"op": "Replace", "path": "active", "value": "False"}]}
    assert scim_call(app.test_client(), token, "PATCH", f"Users/{scim_id}", patch).status_code == 200
    assert _rows(app, active)[lena].blocked
    assert client.get("/profile/").status_code in (302, 303)


def test_a_blocked_provisioned_account_blocks_the_merged_one_at_that_sign_in(app, client, active):
    lena = _signed_in_before_provisioning(app, active)
    scim_id = scim_user(app.test_client(), provisioning_token(app, active), LENA, ALIAS, active=False)
    page = sso_sign_in(client, LENA)
    assert page.status_code == 403 and b"Your account is blocked" in page.data
    assert client.get("/profile/").status_code in (302, 303)  # no session
    assert app.extensions["test_early_client"].get("/profile/").status_code in (302, 303)  # the earlier one ended
    users = _rows(app, active)
    assert [u.id for u in users.values() if u.scim_id is not None] == [lena]
    assert users[lena].blocked and users[lena].scim_id == scim_id
    assert audit_outcomes(app, "sign_in")[-1][:2] == ("failure", "blocked")
    assert ("success", f"user {lena} sessions_ended=1") in [e[:2] for e in audit_outcomes(app, "user_blocked")]


def test_a_break_glass_account_is_never_merged(app, client, active, caplog):
    with app.app_context():
        passwords.create_local_user(LENA, "Northwind Traders", PASSWORD, role="admin", break_glass=True)
    sso_sign_in(client, LENA)  # linked by her verified email to the break-glass account
    sign_out(client)
    users = _rows(app, active)
    [lena] = [u.id for u in users.values() if u.object_id == LENA_OID]
    assert users[lena].break_glass
    token = provisioning_token(app, active)
    second = _scim_row(app, scim_user(app.test_client(), token, "l.fischer@northwind.example", ALIAS))
    with caplog.at_level("INFO"):
        assert sso_sign_in(client, LENA).status_code in (302, 303)
    users = _rows(app, active)
    assert users[lena].scim_id is None and users[second].scim_id is not None and users[second].object_id is None
    assert f"Provisioned user {second} not merged into user {lena}" in caplog.text


def test_several_matching_provisioned_accounts_merge_none(app, client, active, caplog):
    lena = _signed_in_before_provisioning(app, active)
    token = provisioning_token(app, active)
    by_alias = _scim_row(app, scim_user(app.test_client(), token, LENA, ALIAS))
    # Another provisioned account, whose externalId the mapping later made her object id.
    other = scim_user(app.test_client(), token, "l.fischer@northwind.example", "E-10442")
    patch = {"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
             "Operations": [{"op": "Replace", "path": "externalId", "value": LENA_OID}]}
    assert scim_call(app.test_client(), token, "PATCH", f"Users/{other}", patch).status_code == 200
    by_oid = _scim_row(app, other)
    with caplog.at_level("INFO"):
        assert sso_sign_in(client, LENA).status_code in (302, 303)  # she signs in to her own account
    users = _rows(app, active)
    assert users[lena].scim_id is None and {by_alias, by_oid} <= set(users)
    assert users[by_alias].object_id is None and users[by_oid].object_id is None
    assert f"matched several provisioned users ({by_oid}, {by_alias}): none merged" in caplog.text
    assert not [e for e in audit_outcomes(app, "identity_linked") if e[1] == "provisioned_user_merged"]


def test_a_block_that_would_leave_no_admin_is_not_merged(app, client, active, caplog):
    lena = _signed_in_before_provisioning(app, active)
    with app.app_context():
        org = db.session.get(Organization, active)
        members.set_role(org, db.session.get(User, lena), "admin", policy.OPERATOR)
        [local] = directory.users_by_email("admin@northwind.example", org)
        members.set_blocked(org, local, True, policy.OPERATOR)  # Lena is the last admin who can sign in
    second = _scim_row(app, scim_user(app.test_client(), provisioning_token(app, active), LENA, ALIAS, active=False))
    with caplog.at_level("INFO"):
        assert sso_sign_in(client, LENA).status_code in (302, 303)
    assert client.get("/settings/general").status_code == 200
    users = _rows(app, active)
    assert not users[lena].blocked and users[lena].scim_id is None and users[second].blocked
    assert f"Provisioned user {second} not merged into user {lena}" in caplog.text
