"""The emulator as Entra's provisioning service: one cycle against a small SCIM app that records every request.

The app parses what it receives with scim2-models (the library chosen for the portal's endpoint, docs/scim.md)
under the policy Entra needs, so these tests also show the library takes Entra's bodies as the emulator sends them.
"""
import uuid

import pytest
from flask import Flask, jsonify, request
from scim2_models import (Context, EnterpriseUser, Group, ListResponse, PatchOp, ScimFilter, ScimPolicy, User)

from emulator.transport import WSGIAdapter
from emulator_flows import CLIENT_ID, NW, authorize_path, form_of, pkce, sign_in, submit

TENANT_URL = "https://scim.test/scim/v2"
TOKEN = "s3cret-token-for-tests"
ADMIN, LENA, OMAR, JUN = ("0a6d1c52-7c1e-4d0b-9a57-3e2f1b8c4d01", "1b7e2d63-8d2f-4e1c-8b68-4f3a2c9d5e02",
                          "2c8f3e74-9e3a-4f2d-9c79-5a4b3dae6f03", "3d9a4f85-af4b-4a3e-8d8a-6b5c4ebf7a04")
# The directory's Northwind groups: Sales team (Lena), Operations (Omar, Jun).
SALES, OPERATIONS = "8a1b2c3d-0e1f-4a2b-9c3d-4e5f6a7b8c01", "8a1b2c3d-0e1f-4a2b-9c3d-4e5f6a7b8c02"
PAGE = f"/_entra/{NW}/enterprise-applications/{CLIENT_ID}/provisioning"
EntraUser = User[EnterpriseUser]
# What the portal's endpoint will need for Entra's default PATCHes (docs/scim.md).
ENTRA_POLICY = ScimPolicy(remove_value_as_filter=ScimPolicy.RemoveValue.apply,
                          unmatched_path_filter=ScimPolicy.UnmatchedPathFilter.create)


class ScimApp:
    """A SCIM service provider in a few routes: users and groups in memory, every request recorded."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.users: dict[str, EntraUser] = {}
        self.groups: dict[str, Group] = {}
        self.fail: dict[str, int] = {}  # "METHOD /path-prefix" -> status
        app = self.app = Flask(__name__)
        app.add_url_rule("/scim/v2/<kind>", view_func=self.collection, methods=["GET", "POST"])
        app.add_url_rule("/scim/v2/<kind>/<rid>", view_func=self.resource, methods=["PATCH", "DELETE"])

    def _record(self):
        self.requests.append({"method": request.method, "path": request.path, "args": request.args.to_dict(),
                              "headers": dict(request.headers), "body": request.get_json(silent=True)})
        for key, status in self.fail.items():
            method, prefix = key.split(" ", 1)
            if request.method == method and request.full_path.startswith(prefix):
                return jsonify(schemas=["urn:ietf:params:scim:api:messages:2.0:Error"], status=str(status),
                               scimType="uniqueness", detail="userName is taken"), status
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return jsonify(status="401", detail="bad token"), 401
        return None

    def collection(self, kind):
        refused = self._record()
        if refused:
            return refused
        model, store = (EntraUser, self.users) if kind == "Users" else (Group, self.groups)
        if request.method == "POST":
            with ENTRA_POLICY:
                item = model.model_validate(request.get_json(), scim_ctx=Context.RESOURCE_CREATION_REQUEST)
            item.id = uuid.uuid4().hex
            store[item.id] = item
            return item.model_dump(scim_ctx=Context.RESOURCE_CREATION_RESPONSE), 201
        found = [r for r in store.values() if ScimFilter[model](request.args["filter"]).match(r)]
        listed = ListResponse[model](total_results=len(found), resources=found, start_index=1,
                                     items_per_page=len(found))
        return listed.model_dump(scim_ctx=Context.SEARCH_RESPONSE)

    def resource(self, kind, rid):
        refused = self._record()
        if refused:
            return refused
        model, store = (EntraUser, self.users) if kind == "Users" else (Group, self.groups)
        if request.method == "DELETE":
            del store[rid]
            return "", 204
        with ENTRA_POLICY:
            patch = PatchOp[model].model_validate(request.get_json(), scim_ctx=Context.RESOURCE_PATCH_REQUEST)
            patch.patch(store[rid])
        return "", 204

    def calls(self):
        """Each request as "METHOD path?query" (filters decoded), in order."""
        out = []
        for r in self.requests:
            query = "&".join(f"{k}={v}" for k, v in r["args"].items())
            out.append(f"{r['method']} {r['path'].removeprefix('/scim/v2')}" + (f"?{query}" if query else ""))
        return out

    def user(self, upn):
        return next(u for u in self.users.values() if u.user_name == upn)


@pytest.fixture
def scim(emu):
    app = ScimApp()
    emu.provisioning_session.mount("https://scim.test/", WSGIAdapter(app.app))
    emu.configure_provisioning(NW, tenant_url=TENANT_URL, token=TOKEN)
    return app


def test_first_cycle_looks_up_then_creates_users_and_groups(emu, scim):
    emu.set_tenant(NW, assigned=[ADMIN, SALES])  # Lena through the Sales team
    summary = emu.provision(NW)

    assert summary["errors"] == []
    assert summary["users"]["created"] == 2 and summary["groups"]["created"] == 1
    assert scim.calls() == [
        'GET /Users?filter=userName eq "admin@northwind.example"', "POST /Users",
        'GET /Users?filter=userName eq "lena.fischer@northwind.example"', "POST /Users",
        'GET /Groups?filter=displayName eq "Sales team"&excludedAttributes=members', "POST /Groups",
        f"PATCH /Groups/{next(iter(scim.groups))}"]
    for r in scim.requests:
        assert r["headers"]["Authorization"] == f"Bearer {TOKEN}"
        assert r["headers"]["Accept"] == "application/scim+json"
    posted = scim.requests[3]["body"]
    assert posted["userName"] == "lena.fischer@northwind.example" and posted["externalId"] == LENA
    assert posted["active"] is True and posted["emails"] == [
        {"primary": True, "type": "work", "value": "lena.fischer@northwind.example"}]
    assert posted["name"] == {"formatted": "Lena Fischer", "givenName": "Lena", "familyName": "Fischer"}
    assert posted["phoneNumbers"] == [{"type": "work", "value": "+1 555 0102"}, {"type": "mobile", "value": "+1 555 0112"}]
    assert posted["addresses"] == [{"type": "work", "streetAddress": "12 Harbour Road", "postalCode": "98101"}]
    assert posted["title"] == "Sales Manager"
    assert posted["urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"] == {"department": "Sales"}
    assert scim.requests[3]["headers"]["Content-Type"] == "application/scim+json"
    group = scim.requests[5]["body"]
    assert group["displayName"] == "Sales team" and group["externalId"] == SALES and group["members"] == []
    lena = scim.user("lena.fischer@northwind.example").id
    add = scim.requests[6]["body"]["Operations"]
    assert add == [{"op": "Add", "path": "members", "value": [{"value": lena}]}]
    assert [m.value for m in next(iter(scim.groups.values())).members] == [lena]


def test_second_cycle_without_changes_only_looks_up(emu, scim):
    emu.set_tenant(NW, assigned=[ADMIN, SALES])
    emu.provision(NW)
    scim.requests.clear()
    summary = emu.provision(NW)
    assert [c.split(" ")[0] for c in scim.calls()] == ["GET", "GET", "GET"]
    assert summary["users"] == {"created": 0, "updated": 0, "disabled": 0, "deleted": 0, "unchanged": 2}
    assert summary["groups"]["unchanged"] == 1


def test_changed_attributes_are_patched_with_entra_capitalised_ops(emu, scim):
    emu.set_tenant(NW, assigned=[LENA])
    emu.provision(NW)
    lena = emu.directory.user_by_oid(LENA)
    lena.profile["jobTitle"] = "Head of Sales"
    lena.mail = "lena@northwind.example"
    scim.requests.clear()
    assert emu.provision(NW)["users"]["updated"] == 1
    patch = scim.requests[-1]
    assert patch["method"] == "PATCH" and patch["path"].endswith(scim.user(lena.upn).id)
    assert patch["body"] == {"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": [
        {"op": "Replace", "path": "title", "value": "Head of Sales"},
        {"op": "Replace", "path": 'emails[type eq "work"].value', "value": "lena@northwind.example"}]}
    stored = scim.user(lena.upn)
    assert stored.title == "Head of Sales" and stored.emails[0].value == "lena@northwind.example"


def test_disabled_and_unassigned_users_are_patched_active_false_as_a_string(emu, scim):
    emu.set_tenant(NW, assigned=[LENA, OMAR])
    emu.provision(NW)
    emu.set_user_state(LENA, "disabled")
    emu.set_tenant(NW, assigned=[LENA])  # Omar unassigned
    scim.requests.clear()
    summary = emu.provision(NW)
    assert summary["users"]["disabled"] == 2
    patches = [r for r in scim.requests if r["method"] == "PATCH"]
    assert [p["body"]["Operations"] for p in patches] == [[{"op": "Replace", "path": "active", "value": "False"}]] * 2
    assert scim.user("lena.fischer@northwind.example").active is False
    assert scim.user("omar.haddad@northwind.example").active is False
    # Enabled again: the user comes back with active "True".
    emu.set_user_state(LENA, "enabled")
    scim.requests.clear()
    emu.provision(NW)
    lena = scim.user("lena.fischer@northwind.example").id
    assert [r["body"] for r in scim.requests if r["method"] == "PATCH"] == [
        {"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
         "Operations": [{"op": "Replace", "path": "active", "value": "True"}]}]
    assert f"PATCH /Users/{lena}" in scim.calls()
    assert scim.user("lena.fischer@northwind.example").active is True


def test_hard_deleted_user_is_deleted_and_leaves_the_group(emu, scim):
    emu.set_tenant(NW, assigned=[OPERATIONS])
    emu.provision(NW)
    operations = next(iter(scim.groups.values()))
    assert len(operations.members) == 2
    omar = scim.user("omar.haddad@northwind.example").id
    emu.set_user_state(OMAR, "deleted")
    scim.requests.clear()
    summary = emu.provision(NW)
    assert summary["users"]["deleted"] == 1 and summary["groups"]["updated"] == 1
    assert f"DELETE /Users/{omar}" in scim.calls()
    removal = scim.requests[-1]
    assert removal["method"] == "PATCH" and removal["body"]["Operations"] == [
        {"op": "Remove", "path": "members", "value": [{"value": omar}]}]
    assert [m.value for m in operations.members] == [scim.user("jun.park@northwind.example").id]


def test_group_membership_change_adds_and_removes(emu, scim):
    emu.set_tenant(NW, assigned=[SALES, ADMIN])
    emu.provision(NW)
    emu.set_group_members(SALES, [ADMIN])
    scim.requests.clear()
    emu.provision(NW)
    ops = scim.requests[-1]["body"]["Operations"]
    assert ops == [{"op": "Add", "path": "members", "value": [{"value": scim.user("admin@northwind.example").id}]},
                   {"op": "Remove", "path": "members", "value": [{"value": scim.user("lena.fischer@northwind.example").id}]}]
    assert scim.user("lena.fischer@northwind.example").active is False  # out of scope with the group


def test_app_role_assignments_put_users_and_groups_in_scope(emu, scim):
    emu.assign_app_role("lena.fischer@northwind.example")
    emu.assign_app_role(OPERATIONS)
    summary = emu.provision(NW)
    assert {u.user_name for u in scim.users.values()} == {
        "lena.fischer@northwind.example", "omar.haddad@northwind.example", "jun.park@northwind.example"}
    assert summary["groups"]["created"] == 1 and [g.display_name for g in scim.groups.values()] == ["Operations"]
    emu.unassign_app_role("lena.fischer@northwind.example")
    assert emu.provision(NW)["users"]["disabled"] == 1


def test_errors_are_counted_and_the_cycle_goes_on(emu, scim):
    emu.set_tenant(NW, assigned=[ADMIN, LENA])
    scim.fail["POST /scim/v2/Users"] = 409
    summary = emu.provision(NW)
    assert summary["users"]["created"] == 0
    assert summary["errors"] == ["POST /Users: 409 uniqueness userName is taken"] * 2
    emu.configure_provisioning(NW, token="wrong")
    scim.fail.clear()
    assert emu.provision(NW)["errors"][0].startswith("GET /Users?filter=")


def test_unreachable_tenant_url_is_an_error_not_a_crash(emu, scim):
    emu.set_tenant(NW, assigned=[LENA])
    emu.configure_provisioning(NW, tenant_url="https://nowhere.test/scim")
    summary = emu.provision(NW)
    assert summary["users"]["created"] == 0 and "ConnectionError" in summary["errors"][0]


def _admin_page(browser):
    """Sign in as the tenant's administrator on the page's own sign-in step, then open it."""
    signin = browser.get(PAGE)
    assert "Sign in as an administrator" in signin.get_data(as_text=True)
    submit(browser, signin, username="admin@northwind.example")
    return browser.get(PAGE)


def test_provisioning_page_needs_a_tenant_admin(browser):
    signin = browser.get(PAGE)
    submit(browser, signin, username="lena.fischer@northwind.example")
    assert "Sign in as an administrator" in browser.get(PAGE).get_data(as_text=True)


def test_provisioning_page_saves_and_provisions_now(emu, scim, browser):
    page = _admin_page(browser)
    assert page.status_code == 200
    assert "Provision now" in page.get_data(as_text=True) and "No cycle has run yet" in page.get_data(as_text=True)
    action, fields = form_of(page)
    fields.update({"tenant_url": TENANT_URL, "token": TOKEN, "scope": "assigned", "action": "provision",
                   "assigned": [ADMIN, SALES], f"state-{LENA}": "enabled",
                   # the boxes a browser sends as they are checked: the directory's members
                   f"members-{SALES}": [LENA], f"members-{OPERATIONS}": [OMAR, JUN]})
    done = browser.post(action, data=fields, follow_redirects=True)
    assert done.status_code == 200
    text = " ".join(done.get_data(as_text=True).split())
    assert "<dt>Users</dt><dd>2 created, 0 updated, 0 disabled, 0 deleted, 0 unchanged</dd>" in text
    assert "<dt>Groups</dt><dd>1 created, 0 updated, 0 deleted, 0 unchanged</dd>" in text
    assert "<dt>Errors</dt><dd>0</dd>" in text
    assert TOKEN not in text  # the secret token is never shown back
    assert {u.user_name for u in scim.users.values()} == {"admin@northwind.example", "lena.fischer@northwind.example"}


def test_provisioning_page_refuses_bad_input(emu, browser):
    page = _admin_page(browser)
    _, fields = form_of(page)
    fields.update({"tenant_url": "javascript:alert(1)", "action": "save"})
    assert browser.post(PAGE, data=fields).status_code == 400
    assert emu.store.provisioning(NW)["tenant_url"] is None
    fields["tenant_url"] = TENANT_URL + "?aadOptscim062020"
    refused = browser.post(PAGE, data=fields)
    assert refused.status_code == 400 and "aadOptscim062020 are not emulated" in refused.get_data(as_text=True)
    assert emu.store.provisioning(NW)["tenant_url"] is None
    fields.pop("csrf_token")
    assert browser.post(PAGE, data=fields).status_code == 400
    assert browser.get(f"/_entra/not-a-tenant/enterprise-applications/{CLIENT_ID}/provisioning").status_code == 404


def test_assignment_through_a_group_lets_members_sign_in(emu, browser):
    emu.set_tenant(NW, assignment_required=True, assigned=[SALES])
    params, _ = sign_in(browser, "lena.fischer@northwind.example")
    assert "code" in params
    params, _ = sign_in(browser, "jun.park@northwind.example")
    assert params["error"] == "access_denied" and params["error_description"].startswith("AADSTS50105:")


def test_disabled_user_cannot_sign_in_and_deleted_one_is_not_found(emu, browser):
    emu.set_user_state(LENA, "disabled")
    emu.set_user_state(OMAR, "deleted")
    _, challenge = pkce()
    page = browser.get(authorize_path("organizations", challenge))
    refused = submit(browser, page, username="lena.fischer@northwind.example")
    assert refused.status_code == 400 and "AADSTS50057" in refused.get_data(as_text=True)
    page = browser.get(authorize_path("organizations", challenge))
    again = submit(browser, page, username="omar.haddad@northwind.example")
    assert again.status_code == 200 and "Choose an account to sign in." in again.get_data(as_text=True)


def test_attributes_the_app_lacks_are_added_and_external_id_can_come_from_mail_nickname(emu, scim):
    emu.set_tenant(NW, assigned=[OMAR])
    emu.configure_provisioning(NW, external_id="mailNickname")
    emu.provision(NW)
    assert scim.requests[1]["body"]["externalId"] == "omar.haddad"
    emu.directory.user_by_oid(OMAR).profile["mobilePhone"] = "+1 555 0113"  # Omar had none
    scim.requests.clear()
    emu.provision(NW)
    assert scim.requests[-1]["body"]["Operations"] == [
        {"op": "Add", "path": 'phoneNumbers[type eq "mobile"].value', "value": "+1 555 0113"}]
    assert [(p.type, p.value) for p in scim.user("omar.haddad@northwind.example").phone_numbers] == [
        ("work", "+1 555 0103"), ("mobile", "+1 555 0113")]


def test_unticking_every_assignment_on_the_page_disables_the_provisioned_users(emu, scim, browser):
    emu.set_tenant(NW, assigned=[LENA])
    emu.provision(NW)
    page = _admin_page(browser)
    action, fields = form_of(page)
    # What a browser sends with no box ticked: the selects and the groups' markers, no "assigned".
    fields.update({f"state-{oid}": "enabled" for oid in (ADMIN, LENA, OMAR, JUN)}, action="provision")
    fields.update({f"members-{SALES}": [LENA], f"members-{OPERATIONS}": [OMAR, JUN]})
    browser.post(action, data=fields)
    assert emu.tenant_settings(NW)["assigned"] == []
    assert scim.user("lena.fischer@northwind.example").active is False


def test_generated_users_and_a_new_group_are_provisioned_and_remembered_after_a_failed_request(emu, scim):
    people = emu.add_users(NW, 30)
    assert len({u.upn for u in people}) == 30 and emu.add_users(NW, 30) == []  # the same people, not added twice
    team = emu.add_group(NW, "Team 1", [u.oid for u in people[:10]])
    emu.set_tenant(NW, assigned=[u.oid for u in people] + [team.id])
    scim.fail["POST /scim/v2/Groups"] = 409  # the last request of the cycle fails
    summary = emu.provision(NW)
    assert summary["users"]["created"] == 30 and len(summary["errors"]) == 1
    # What the cycle created before the failure is remembered: the next cycle creates no user again.
    scim.fail.clear()
    scim.requests.clear()
    summary = emu.provision(NW)
    assert summary["users"] == {"created": 0, "updated": 0, "disabled": 0, "deleted": 0, "unchanged": 30}
    assert summary["groups"]["created"] == 1
    assert [len(g.members) for g in scim.groups.values()] == [10]


def test_portal_admins_group_is_in_each_demo_tenant(emu):
    for tenant in emu.directory.tenants:
        group = emu.directory.group(tenant.tid, "Portal Admins")
        assert group is not None and len(emu.group_members(group)) == 1
        member = emu.directory.user_by_oid(emu.group_members(group)[0])
        assert member.tid == tenant.tid and not member.is_admin  # never the tenant admin (break-glass in the demo)
