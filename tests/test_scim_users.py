"""SCIM /Users as Entra's provisioning service calls it: what each operation answers and what the portal stores."""
from __future__ import annotations

import pytest

from domain import members
from helpers import PASSWORD, database_bytes, signed_in, sso_sign_in
from models import AuditEvent, LoginSession, Organization, User, db
from scim_client import ENTERPRISE, is_scim_error, user_body

LENA = "lena.fischer@northwind.example"
LENA_OID = "1b7e2d63-8d2f-4e1c-8b68-4f3a2c9d5e02"
OMAR = "omar.haddad@northwind.example"


def _user(app, scim_id: str) -> User | None:
    with app.app_context():
        user = db.session.execute(db.select(User).where(User.scim_id == scim_id)).scalar_one_or_none()
        if user is not None:
            db.session.expunge(user)
        return user


def _audit(app, action: str) -> list[AuditEvent]:
    with app.app_context():
        events = list(db.session.execute(db.select(AuditEvent).where(AuditEvent.action == action)).scalars())
        for e in events:
            db.session.expunge(e)
        return events


def test_post_creates_a_provisioned_user_with_everything_sealed(app, scim):
    resp = scim.post("/Users", user_body(LENA, LENA_OID))
    assert resp.status_code == 201 and resp.mimetype == "application/scim+json"
    body = resp.json
    assert body["userName"] == LENA and body["externalId"] == LENA_OID and body["active"] is True
    assert body[ENTERPRISE] == {"department": "Sales", "employeeNumber": "E-1042"}
    assert body["name"]["givenName"] == "Lena" and body["meta"]["resourceType"] == "User"
    assert resp.headers["Location"] == body["meta"]["location"].replace("http://", "http://")
    assert body["meta"]["location"].endswith("/scim/v2/Users/" + body["id"])
    user = _user(app, body["id"])
    assert user.role == "member" and not user.blocked and user.object_id is None and user.scim_data_enc
    stored = database_bytes(app)
    for plain in (b"Fischer", b"Sales lead", b"E-1042", b"10115", LENA.encode(), LENA_OID.encode()):
        assert plain not in stored
    [event] = _audit(app, "scim_user_created")
    assert event.by_provisioning and event.actor_id is None and event.detail == f"user {user.id}"
    # The id is opaque: not the row id.
    assert body["id"] != str(user.id) and len(body["id"]) >= 16


def test_get_by_id_and_the_supported_filters(scim):
    lena = scim.create_user(LENA, LENA_OID)
    scim.create_user(OMAR, "2c8f3e74-9e3a-4f2d-9c79-5a4b3dae6f03", displayName="Omar")
    got = scim.get(f"/Users/{lena['id']}")
    assert got.status_code == 200 and got.json["userName"] == LENA and got.json["id"] == lena["id"]
    for expression in (f'userName eq "{LENA}"', f'userName eq "{LENA.upper()}"', f'externalId eq "{LENA_OID}"',
                       f'emails[type eq "work"].value eq "{LENA}"'):
        found = scim.find("Users", expression)
        assert [u["id"] for u in found] == [lena["id"]], expression
    assert scim.find("Users", 'userName eq "nobody@northwind.example"') == []
    assert scim.find("Users", f'externalId eq "{LENA_OID.upper()}"') == []  # externalId is case-exact


def test_list_pages_with_start_index_and_count(scim):
    ids = [scim.create_user(f"user{i}@northwind.example", f"ext-{i}")["id"] for i in range(5)]
    page = scim.get("/Users?startIndex=2&count=2").json
    assert page["totalResults"] == 5 and page["startIndex"] == 2 and page["itemsPerPage"] == 2
    assert [u["id"] for u in page["Resources"]] == ids[1:3]
    assert scim.get("/Users?count=0").json["totalResults"] == 5
    assert scim.get("/Users?count=0").json.get("Resources", []) == []
    assert [u["id"] for u in scim.get("/Users?startIndex=-3&count=1").json["Resources"]] == ids[:1]
    assert is_scim_error(scim.get("/Users?count=many"), 400, "invalidValue")


def test_put_replaces_the_attributes(app, scim):
    lena = scim.create_user(LENA, LENA_OID)
    resp = scim.put(f"/Users/{lena['id']}", user_body(LENA, LENA_OID, title="Head of sales", displayName="Lena F.",
                                                      **{ENTERPRISE: {"department": "Board"}}))
    assert resp.status_code == 200
    assert resp.json["title"] == "Head of sales" and resp.json[ENTERPRISE] == {"department": "Board"}
    again = scim.get(f"/Users/{lena['id']}").json
    assert again["displayName"] == "Lena F." and "employeeNumber" not in again[ENTERPRISE]
    assert [e.detail for e in _audit(app, "scim_user_updated")] == [f"user {_user(app, lena['id']).id}"]


def test_patch_with_and_without_path_as_entra_sends_it(scim):
    lena = scim.create_user(LENA, LENA_OID)
    resp = scim.patch(f"/Users/{lena['id']}",
                      {"op": "Replace", "path": 'emails[type eq "work"].value', "value": "lena.f@northwind.example"},
                      {"op": "Add", "path": 'phoneNumbers[type eq "work"].value', "value": "+49 30 7654321"},
                      {"op": "Replace", "path": "name.familyName", "value": "Fischer-Lang"},
                      {"op": "Add", "path": f"{ENTERPRISE}:manager", "value": "manager-id-1"},
                      {"op": "Replace", "value": {"displayName": "Lena Fischer-Lang", "title": "CFO"}},
                      {"op": "Remove", "path": "addresses"})
    assert resp.status_code == 200, resp.json
    got = scim.get(f"/Users/{lena['id']}").json
    assert {"type": "work", "value": "lena.f@northwind.example", "primary": True} in got["emails"]
    assert {"type": "work", "value": "+49 30 7654321"} in got["phoneNumbers"]
    assert got["name"]["familyName"] == "Fischer-Lang" and got["title"] == "CFO"
    assert got[ENTERPRISE]["manager"]["value"] == "manager-id-1" and "addresses" not in got
    assert got["userName"] == LENA  # the work email is an attribute; userName stays the user's email


def test_patch_username_changes_the_email(app, scim):
    lena = scim.create_user(LENA, LENA_OID)
    resp = scim.patch(f"/Users/{lena['id']}", {"op": "replace", "path": "userName", "value": "lena@northwind.example"})
    assert resp.status_code == 200 and resp.json["userName"] == "lena@northwind.example"
    assert [u["id"] for u in scim.find("Users", 'userName eq "lena@northwind.example"')] == [lena["id"]]
    assert scim.find("Users", f'userName eq "{LENA}"') == []


def test_manager_as_a_bare_string_in_a_post(scim):
    resp = scim.post("/Users", user_body(LENA, LENA_OID, **{ENTERPRISE: {"manager": "boss-id"}}))
    assert resp.status_code == 201 and resp.json[ENTERPRISE]["manager"]["value"] == "boss-id"


def test_active_false_as_a_string_blocks_and_ends_a_live_session(app, client, scim):
    sso_sign_in(client, LENA)  # Lena exists (SSO) and is signed in: provisioning adopts her by userName
    assert signed_in(client)
    lena = scim.create_user(LENA, LENA_OID)
    resp = scim.patch(f"/Users/{lena['id']}", {"op": "Replace", "path": "active", "value": "False"})
    assert resp.status_code == 200 and resp.json["active"] is False
    assert not signed_in(client)
    user = _user(app, lena["id"])
    assert user.blocked and user.object_id == LENA_OID
    [blocked] = _audit(app, "user_blocked")
    assert blocked.by_provisioning and blocked.detail.startswith(f"user {user.id}")
    resp = scim.patch(f"/Users/{lena['id']}", {"op": "Replace", "path": "active", "value": "True"})
    assert resp.json["active"] is True and not _user(app, lena["id"]).blocked
    assert _audit(app, "user_unblocked")[0].by_provisioning


def test_post_with_active_false_creates_a_blocked_user(app, scim):
    lena = scim.create_user(LENA, LENA_OID, active="False")
    assert lena["active"] is False and _user(app, lena["id"]).blocked


def test_delete_removes_like_the_users_tab_and_entra_can_create_again(app, scim):
    lena = scim.create_user(LENA, LENA_OID)
    user_id = _user(app, lena["id"]).id
    assert scim.delete(f"/Users/{lena['id']}").status_code == 204
    with app.app_context():
        assert db.session.get(User, user_id) is None
    assert is_scim_error(scim.get(f"/Users/{lena['id']}"), 404)
    [removed] = _audit(app, "user_removed")
    assert removed.by_provisioning and removed.detail == f"user {user_id}"
    again = scim.create_user(LENA, LENA_OID)
    assert again["id"] != lena["id"]


def test_duplicates_are_409_uniqueness(app, scim):
    scim.create_user(LENA, LENA_OID)
    assert is_scim_error(scim.post("/Users", user_body(LENA, "other")), 409, "uniqueness")
    assert is_scim_error(scim.post("/Users", user_body(OMAR, LENA_OID)), 409, "uniqueness")
    omar = scim.create_user(OMAR, "omar")
    assert is_scim_error(scim.patch(f"/Users/{omar['id']}", {"op": "Replace", "path": "userName", "value": LENA}),
                         409, "uniqueness")
    assert is_scim_error(scim.put(f"/Users/{omar['id']}", user_body(OMAR, LENA_OID)), 409, "uniqueness")
    with app.app_context():
        assert db.session.scalar(db.select(db.func.count()).select_from(User).where(User.scim_id.is_not(None))) == 2


def test_adoption_refuses_break_glass_and_another_microsoft_account(app, client, scim):
    from domain import passwords
    with app.app_context():
        passwords.create_local_user("keyholder@northwind.example", "Northwind Traders", PASSWORD, role="admin",
                                    break_glass=True)
    assert is_scim_error(scim.post("/Users", user_body("keyholder@northwind.example", "x")), 409, "uniqueness")
    sso_sign_in(client, LENA)
    # An externalId that is another object's id: Lena's account is linked to another Microsoft account.
    other_object = "2c8f3e74-9e3a-4f2d-9c79-5a4b3dae6f03"
    assert is_scim_error(scim.post("/Users", user_body(LENA, other_object)), 409, "uniqueness")
    assert is_scim_error(scim.post("/Users", user_body(LENA, other_object.upper())), 409, "uniqueness")
    with app.app_context():
        assert db.session.scalar(db.select(db.func.count()).select_from(User).where(User.scim_id.is_not(None))) == 0


@pytest.mark.parametrize("external_id, copies", [(LENA_OID, True), ("lena.fischer", True), (LENA_OID, False),
                                                 (LENA_OID.upper(), True)],
                         ids=["objectId", "mailNickname", "objectId-no-copies", "objectId-upper-case"])
def test_a_user_who_signed_in_before_provisioning_is_adopted_and_disabling_blocks_them(app, client, scim, active,
                                                                                         external_id, copies):
    from domain import directory

    with app.app_context():
        db.session.get(Organization, active).store_profiles = copies
        db.session.commit()
    sso_sign_in(client, LENA)  # SSO before provisioning was turned on: a Microsoft account, not provisioned
    assert signed_in(client)
    with app.app_context():
        before = db.session.scalar(db.select(db.func.count()).select_from(User))
    lena = scim.create_user(LENA, external_id)  # Entra's first cycle
    with app.app_context():
        assert db.session.scalar(db.select(db.func.count()).select_from(User)) == before  # one account
        user = db.session.execute(db.select(User).where(User.object_id == LENA_OID)).scalar_one()
        assert user.scim_id == lena["id"] and directory.users_by_email(LENA) == [user]
    [created] = _audit(app, "scim_user_created")
    assert created.detail == f"user {user.id} adopted"
    assert scim.patch(f"/Users/{lena['id']}", {"op": "Replace", "path": "active", "value": "False"}).status_code == 200
    assert not signed_in(client)  # disabled in Entra: her live session ended
    page = sso_sign_in(client, LENA)
    assert page.status_code == 403 and b"Your account is blocked" in page.data


def test_username_outside_the_organisations_domains_is_refused(scim):
    assert is_scim_error(scim.post("/Users", user_body("lena@fabrikam.example", "x")), 400, "invalidValue")
    assert is_scim_error(scim.post("/Users", user_body("not an email", "x")), 400, "invalidValue")


def test_last_admin_cannot_be_blocked_or_removed_by_provisioning(app, scim):
    # The local admin becomes a provisioned user (adopted); made the only admin who can sign in.
    admin = scim.create_user("admin@northwind.example", "0a6d1c52-7c1e-4d0b-9a57-3e2f1b8c4d01")
    before = _user(app, admin["id"])
    resp = scim.patch(f"/Users/{admin['id']}", {"op": "Replace", "path": "active", "value": "False"},
                      {"op": "Replace", "path": "title", "value": "changed"})
    assert is_scim_error(resp, 400, "mutability") and "last administrator" in resp.json["detail"]
    assert is_scim_error(scim.delete(f"/Users/{admin['id']}"), 400, "mutability")
    after = _user(app, admin["id"])
    assert not after.blocked and after.role == "admin" and after.scim_data_enc == before.scim_data_enc
    failures = [e for e in _audit(app, "scim_user_updated") + _audit(app, "user_removed") if e.outcome == "failure"]
    assert [e.detail for e in failures] == [f"user {after.id} last_admin"] * 2
    assert all(e.by_provisioning for e in failures)


def test_break_glass_is_never_blocked(app, scim):
    lena = scim.create_user(LENA, LENA_OID)
    with app.app_context():
        user = db.session.execute(db.select(User).where(User.scim_id == lena["id"])).scalar_one()
        user.break_glass = True
        db.session.commit()
    resp = scim.patch(f"/Users/{lena['id']}", {"op": "Replace", "path": "active", "value": "False"})
    assert is_scim_error(resp, 400, "mutability") and not _user(app, lena["id"]).blocked
    assert is_scim_error(scim.delete(f"/Users/{lena['id']}"), 400, "mutability")


def test_another_organisations_ids_are_404(app, scim):
    from domain import directory, provisioning
    from domain.policy import OPERATOR
    from scim_client import ScimClient
    lena = scim.create_user(LENA, LENA_OID)
    with app.app_context():
        other = directory.create_organization("Fabrikam", ["fabrikam.example"])
        other.sso_active = True
        db.session.commit()
        fabrikam = ScimClient(app.test_client(), provisioning.generate_token(other, OPERATOR))
    for resp in (fabrikam.get(f"/Users/{lena['id']}"), fabrikam.delete(f"/Users/{lena['id']}"),
                 fabrikam.patch(f"/Users/{lena['id']}", {"op": "Replace", "path": "active", "value": "False"}),
                 fabrikam.put(f"/Users/{lena['id']}", user_body("x@fabrikam.example", "y")),
                 fabrikam.get("/Users/not-an-id-at-all")):
        assert is_scim_error(resp, 404), resp.json
        assert resp.json["detail"] == "No such user."
    assert fabrikam.find("Users", f'userName eq "{LENA}"') == []
    assert fabrikam.get("/Users").json["totalResults"] == 0
    assert not _user(app, lena["id"]).blocked


def test_store_a_copy_off_keeps_no_personal_data(app, scim):
    with app.app_context():
        org = db.session.execute(db.select(Organization)).scalars().first()
        org.store_profiles = False
        db.session.commit()
    lena = scim.create_user(LENA, LENA_OID)
    assert lena["userName"] == LENA and lena["active"] is True
    assert "displayName" not in lena and "externalId" not in lena and ENTERPRISE not in lena
    user = _user(app, lena["id"])
    assert user.scim_data_enc is None and user.scim_external_id_hmac
    stored = database_bytes(app)
    assert b"Fischer" not in stored and b"E-1042" not in stored
    # The externalId's index alone still finds her (for linking at sign-in, and Entra's look-ups).
    assert [u["id"] for u in scim.find("Users", f'externalId eq "{LENA_OID}"')] == [lena["id"]]
    scim.patch(f"/Users/{lena['id']}", {"op": "Add", "path": "title", "value": "CFO"})
    assert "title" not in scim.get(f"/Users/{lena['id']}").json


def test_members_service_sees_provisioned_users(app, scim, active):
    lena = scim.create_user(LENA, LENA_OID)
    from domain.policy import OPERATOR
    with app.app_context():
        org = db.session.get(Organization, active)
        assert LENA in [row.email for row in members.all_members(org, OPERATOR)]
        assert db.session.scalar(db.select(db.func.count()).select_from(LoginSession)) == 0
    assert lena["id"]


def test_turning_store_a_copy_off_deletes_the_provisioned_copies(app, scim, active):
    from domain import profiles
    from domain.policy import OPERATOR
    lena = scim.create_user(LENA, LENA_OID)
    with app.app_context():
        profiles.set_store_profiles(db.session.get(Organization, active), False, OPERATOR)
    user = _user(app, lena["id"])
    assert user.scim_data_enc is None and user.scim_external_id_hmac and user.email_enc
    assert b"E-1042" not in database_bytes(app)
    got = scim.get(f"/Users/{lena['id']}").json
    assert got["userName"] == LENA and "title" not in got
    assert [u["id"] for u in scim.find("Users", f'userName eq "{LENA}"')] == [lena["id"]]
