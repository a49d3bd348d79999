"""SCIM /Groups: create, look up, members in bulk, replace, delete, and the admin group's promotions."""
from __future__ import annotations

from domain import directory, provisioning
from domain.errors import InvalidInput, NotAllowed
from domain.policy import OPERATOR
from helpers import PASSWORD, database_bytes
from models import AuditEvent, Organization, ScimGroup, ScimGroupMember, User, db
from scim_client import GROUP_SCHEMA, is_scim_error

import pytest


def _roles(app) -> dict[str, str]:
    with app.app_context():
        return dict(db.session.execute(db.select(User.scim_id, User.role).where(User.scim_id.is_not(None))).all())


def _org(app, org_id):
    return db.session.get(Organization, org_id)


def test_post_get_and_filter_by_display_name(app, scim):
    resp = scim.post("/Groups", {"schemas": [GROUP_SCHEMA], "externalId": "8a1b-sales", "displayName": "Sales team",
                                 "members": [], "meta": {"resourceType": "Group"}})
    assert resp.status_code == 201 and resp.json["displayName"] == "Sales team"
    group_id = resp.json["id"]
    assert resp.headers["Location"].endswith(f"/scim/v2/Groups/{group_id}")
    got = scim.get(f"/Groups/{group_id}")
    assert got.status_code == 200 and got.json["members"] == [] if "members" in got.json else True
    for expression in ('displayName eq "Sales team"', 'displayName eq "SALES TEAM"', 'externalId eq "8a1b-sales"'):
        assert [g["id"] for g in scim.find("Groups", expression)] == [group_id], expression
    assert b"Sales team" not in database_bytes(app)
    with app.app_context():
        [event] = db.session.execute(db.select(AuditEvent).where(AuditEvent.action == "scim_group_created")).scalars()
        assert event.by_provisioning and event.detail == f"group {group_id}"


def test_members_added_and_removed_in_bulk_as_entra_sends_them(app, scim):
    users = [scim.create_user(f"user{i:03}@northwind.example", f"ext-{i}")["id"] for i in range(300)]
    group = scim.create_group("Everyone")
    resp = scim.patch(f"/Groups/{group['id']}", {"op": "Add", "path": "members",
                                                 "value": [{"value": u} for u in users]})
    assert resp.status_code == 204
    listed = scim.get(f"/Groups/{group['id']}").json["members"]
    assert sorted(m["value"] for m in listed) == sorted(users)
    without = scim.find("Groups", 'displayName eq "Everyone"', "excludedAttributes=members")
    assert without and "members" not in without[0]
    assert "members" not in scim.get(f"/Groups/{group['id']}?excludedAttributes=members").json
    resp = scim.patch(f"/Groups/{group['id']}", {"op": "Remove", "path": "members",
                                                 "value": [{"value": u} for u in users[:250]]},
                      {"op": "remove", "path": f'members[value eq "{users[250]}"]'})
    assert resp.status_code == 204
    assert sorted(m["value"] for m in scim.get(f"/Groups/{group['id']}").json["members"]) == sorted(users[251:])


def test_unknown_members_are_refused_and_nothing_changes(app, scim):
    lena = scim.create_user("lena.fischer@northwind.example", "l")
    group = scim.create_group("Sales")
    resp = scim.patch(f"/Groups/{group['id']}", {"op": "Add", "path": "members",
                                                 "value": [{"value": lena["id"]}, {"value": "no-such-user"}]})
    assert is_scim_error(resp, 400, "invalidValue")
    with app.app_context():
        assert db.session.scalar(db.select(db.func.count()).select_from(ScimGroupMember)) == 0


def test_put_and_patch_rename_and_replace_members(scim):
    a, b = (scim.create_user(f"{n}@northwind.example", n)["id"] for n in ("a", "b"))
    group = scim.create_group("Sales", members=[a])
    resp = scim.put(f"/Groups/{group['id']}", {"schemas": [GROUP_SCHEMA], "displayName": "Sales EU",
                                               "members": [{"value": b}]})
    assert resp.status_code == 200 and [m["value"] for m in resp.json["members"]] == [b]
    assert scim.patch(f"/Groups/{group['id']}", {"op": "Replace", "path": "displayName", "value": "Sales DE"}
                      ).status_code == 204
    assert scim.get(f"/Groups/{group['id']}").json["displayName"] == "Sales DE"
    assert scim.find("Groups", 'displayName eq "Sales EU"') == []


def test_duplicate_names_are_409_and_deleted_groups_are_404(app, scim):
    group = scim.create_group("Sales", external_id="g1")
    assert is_scim_error(scim.post("/Groups", {"schemas": [GROUP_SCHEMA], "displayName": "sales"}), 409, "uniqueness")
    assert is_scim_error(scim.post("/Groups", {"schemas": [GROUP_SCHEMA], "displayName": "Other", "externalId": "g1"}),
                         409, "uniqueness")
    assert scim.delete(f"/Groups/{group['id']}").status_code == 204
    assert is_scim_error(scim.get(f"/Groups/{group['id']}"), 404)
    assert is_scim_error(scim.delete(f"/Groups/{group['id']}"), 404)
    assert scim.create_group("Sales")["id"] != group["id"]


def test_admin_group_promotes_and_demotes_at_once(app, scim, active):
    lena, omar = (scim.create_user(f"{n}@northwind.example", n)["id"] for n in ("lena", "omar"))
    admins = scim.create_group("Portal Admins", members=[lena])
    with app.app_context():
        assert provisioning.set_admin_group(_org(app, active), admins["id"], OPERATOR)
    assert _roles(app) == {lena: "admin", omar: "member"}  # applied to its current members at once
    scim.patch(f"/Groups/{admins['id']}", {"op": "Add", "path": "members", "value": [{"value": omar}]})
    assert _roles(app) == {lena: "admin", omar: "admin"}
    scim.patch(f"/Groups/{admins['id']}", {"op": "Remove", "path": "members", "value": [{"value": lena}]})
    assert _roles(app) == {lena: "member", omar: "admin"}
    with app.app_context():
        events = db.session.execute(db.select(AuditEvent).where(AuditEvent.action == "role_changed")).scalars().all()
        # Choosing the group is the admin's (here the operator's) act; membership changes are provisioning's.
        assert [(e.by_operator, e.by_provisioning) for e in events] == [(True, False), (False, True), (False, True)]
        status = provisioning.status(_org(app, active))
        assert status.admin_group == admins["id"] and [c.name for c in status.group_choices] == ["Portal Admins"]
        assert (status.users, status.not_linked, status.groups) == (2, 2, 1)


def test_admin_group_never_demotes_break_glass_nor_the_last_admin(app, scim, active):
    admin = scim.create_user("admin@northwind.example", "0a6d1c52-7c1e-4d0b-9a57-3e2f1b8c4d01")["id"]
    glass = scim.create_user("glass@northwind.example", "glass")["id"]
    with app.app_context():
        db.session.execute(db.update(User).where(User.scim_id == glass).values(break_glass=True, role="admin"))
        db.session.commit()
    group = scim.create_group("Portal Admins", members=[admin, glass])
    with app.app_context():
        provisioning.set_admin_group(_org(app, active), group["id"], OPERATOR)
        # Only admin@ can sign in as an admin: the break-glass row has no password in this test.
    resp = scim.patch(f"/Groups/{group['id']}", {"op": "Remove", "path": "members",
                                                 "value": [{"value": admin}, {"value": glass}]})
    assert resp.status_code == 204  # the membership change stands
    assert _roles(app) == {admin: "admin", glass: "admin"}
    with app.app_context():
        failures = db.session.execute(db.select(AuditEvent).where(AuditEvent.action == "role_changed",
                                                                  AuditEvent.outcome == "failure")).scalars().all()
        assert [(e.by_provisioning, e.detail.endswith("last_admin")) for e in failures] == [(True, True)]
        assert db.session.scalar(db.select(db.func.count()).select_from(ScimGroupMember)) == 0


def test_set_admin_group_is_for_admins_and_takes_only_own_groups(app, scim, active):
    group = scim.create_group("Portal Admins")
    with app.app_context():
        org = _org(app, active)
        member = User(organization=org, role="member", email_hmac=b"", email_enc=b"")
        db.session.add(member)
        db.session.commit()
        with pytest.raises(NotAllowed):
            provisioning.set_admin_group(org, group["id"], member)
        with pytest.raises(provisioning.NoSuchGroup):
            provisioning.set_admin_group(org, "no-such-group", OPERATOR)
        assert provisioning.set_admin_group(org, group["id"], OPERATOR)
        assert not provisioning.set_admin_group(org, group["id"], OPERATOR)
        assert provisioning.set_admin_group(org, None, OPERATOR) and org.scim_admin_group_id is None


def test_set_admin_group_is_refused_while_single_sign_on_is_off(app, scim, active):
    group = scim.create_group("Portal Admins")
    with app.app_context():
        org = _org(app, active)
        org.sso_active = False
        db.session.commit()
        with pytest.raises(InvalidInput, match="needs single sign-on"):
            provisioning.set_admin_group(org, group["id"], OPERATOR)
        assert org.scim_admin_group_id is None
        assert not db.session.execute(db.select(AuditEvent).where(AuditEvent.action == "scim_admin_group")).first()


def test_deleting_the_admin_group_or_the_organisation_clears_the_setting(app, scim, active, runner):
    lena = scim.create_user("lena@northwind.example", "l")["id"]
    group = scim.create_group("Portal Admins", members=[lena])
    with app.app_context():
        provisioning.set_admin_group(_org(app, active), group["id"], OPERATOR)
    assert scim.delete(f"/Groups/{group['id']}").status_code == 204
    with app.app_context():
        assert _org(app, active).scim_admin_group_id is None
    assert _roles(app) == {lena: "admin"}  # roles stay; the setting is gone
    second = scim.create_group("Portal Admins", members=[lena])
    with app.app_context():
        provisioning.set_admin_group(_org(app, active), second["id"], OPERATOR)
        counts = directory.delete_organization(_org(app, active), OPERATOR)
        assert counts["provisioned group"] == 1
        assert db.session.scalar(db.select(db.func.count()).select_from(ScimGroup)) == 0
        assert db.session.scalar(db.select(db.func.count()).select_from(ScimGroupMember)) == 0
        assert db.session.scalar(db.select(db.func.count()).select_from(Organization)) == 0


def test_removing_a_user_on_the_users_tab_drops_their_memberships(app, scim, active):
    from domain import members
    lena = scim.create_user("lena@northwind.example", "l")["id"]
    group = scim.create_group("Sales", members=[lena])
    with app.app_context():
        user = db.session.execute(db.select(User).where(User.scim_id == lena)).scalar_one()
        members.remove(_org(app, active), user, OPERATOR)
    assert scim.get(f"/Groups/{group['id']}").json.get("members", []) == []
