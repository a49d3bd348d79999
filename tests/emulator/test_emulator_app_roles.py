"""App roles: assignments to users and groups per tenant, and the `roles` claim of the ID token."""
import re

import pytest
from werkzeug.exceptions import NotFound
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.test import Client

from emulator_flows import CLIENT_ID, NW, tokens_for, verify_id_token


def roles(http, browser, upn):
    claims = verify_id_token(http, tokens_for(http, browser, upn)["id_token"])
    return claims.get("roles")


def test_no_assignment_no_roles_claim(http, browser):
    assert roles(http, browser, "lena.fischer@northwind.example") is None


def test_user_assignment_issues_roles_until_removed(emu, http, browser):
    emu.assign_app_role("lena.fischer@northwind.example")
    assert roles(http, browser, "lena.fischer@northwind.example") == ["Portal.Admin"]
    assert roles(http, browser, "omar.haddad@northwind.example") is None  # only the one assigned
    emu.unassign_app_role("lena.fischer@northwind.example")
    assert roles(http, browser, "lena.fischer@northwind.example") is None


def test_group_assignment_reaches_its_members_only(emu, http, browser):
    emu.assign_app_role("Operations")
    assert roles(http, browser, "jun.park@northwind.example") == ["Portal.Admin"]
    assert roles(http, browser, "lena.fischer@northwind.example") is None
    emu.assign_app_role("1b7e2d63-8d2f-4e1c-8b68-4f3a2c9d5e02")  # Lena, by oid
    emu.unassign_app_role("Operations")
    assert roles(http, browser, "jun.park@northwind.example") is None
    assert roles(http, browser, "lena.fischer@northwind.example") == ["Portal.Admin"]


def test_assignments_are_per_tenant(emu, http, browser):
    emu.assign_app_role("Materials lab/fabrikam.example")
    assert roles(http, browser, "ines.moreau@fabrikam.example") == ["Portal.Admin"]
    assert emu.store.app_role_assignments("6f1c2d3e-4a5b-4c7d-8e9f-0a1b2c3d4e5f", next(iter(emu.clients))) == []


def test_unknown_role_or_principal_is_refused(emu):
    with pytest.raises(ValueError):
        emu.assign_app_role("lena.fischer@northwind.example", "Portal.Owner")
    with pytest.raises(KeyError):
        emu.assign_app_role("nobody@northwind.example")


PAGE = f"/_entra/{NW}/enterprise-applications/{CLIENT_ID}/users-and-groups"
LENA_OID = "1b7e2d63-8d2f-4e1c-8b68-4f3a2c9d5e02"


def _post(browser, page, **fields):
    action = re.search(r'<form method="post" action="([^"]+)"', page.get_data(as_text=True)).group(1)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.get_data(as_text=True)).group(1)
    return browser.post(action, data={"csrf_token": token, **fields})


def test_an_admin_assigns_and_removes_a_role_on_the_users_and_groups_page(emu, http, browser):
    page = browser.get(PAGE)
    assert "Sign in as an administrator" in page.get_data(as_text=True)
    assert _post(browser, page, step="signin", username="admin@northwind.example").status_code == 303
    page = browser.get(PAGE)
    html = page.get_data(as_text=True)
    assert "Users and groups" in html and "Lena Fischer" in html and "Operations" in html
    assert "fabrikam" not in html.lower() and "<script" not in html
    assert _post(browser, page, principal=LENA_OID, role="Portal.Admin", assign="yes").status_code == 303
    assert 'aria-label="Remove Portal.Admin from Lena Fischer"' in browser.get(PAGE).get_data(as_text=True)
    lena = Client(DispatcherMiddleware(NotFound(), {"/_entra": emu.wsgi}))  # her own browser
    assert roles(http, lena, "lena.fischer@northwind.example") == ["Portal.Admin"]
    _post(browser, browser.get(PAGE), principal=LENA_OID, role="Portal.Admin", assign="no")
    assert roles(http, lena, "lena.fischer@northwind.example") is None


def test_only_an_admin_of_the_tenant_may_assign(emu, browser):
    page = browser.get(PAGE)
    _post(browser, page, step="signin", username="lena.fischer@northwind.example")  # a member: refused
    page = browser.get(PAGE)
    assert "Sign in as an administrator" in page.get_data(as_text=True)
    _post(browser, page, principal=LENA_OID, role="Portal.Admin", assign="yes")
    _post(browser, page, step="signin", username="admin@fabrikam.example")  # another tenant's admin: refused
    _post(browser, browser.get(PAGE), principal=LENA_OID, role="Portal.Admin", assign="yes")
    assert emu.store.app_role_assignments(NW, CLIENT_ID) == []


def test_the_page_refuses_forged_or_foreign_input(emu, browser):
    page = browser.get(PAGE)
    _post(browser, page, step="signin", username="admin@northwind.example")
    page = browser.get(PAGE)
    assert browser.post(PAGE, data={"principal": LENA_OID, "role": "Portal.Admin", "assign": "yes"}).status_code == 400
    fabrikam_member = "5fbc6ba7-c16d-4c5a-8fac-8d7e6adb9c06"
    assert _post(browser, page, principal=fabrikam_member, role="Portal.Admin", assign="yes").status_code == 400
    assert _post(browser, page, principal=LENA_OID, role="Portal.Owner", assign="yes").status_code == 400
    assert emu.store.app_role_assignments(NW, CLIENT_ID) == []
    assert browser.get(f"/_entra/{NW}/enterprise-applications/nope/users-and-groups").status_code == 404
