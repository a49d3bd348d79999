"""A provisioning cycle in Chromium, demo mode (JavaScript off; every page checked by Walk.at: axe, no inline script,
360 px): the admin generates a token, pastes the Tenant URL and the token into the emulated Entra admin centre's
Provisioning page, presses Provision now, and finds the provisioned users on the USERS tab; then names the admin group.
(Turning provisioning on, rotating and turning it off are scim-ui's walkthrough.)"""
from __future__ import annotations

from playwright.sync_api import expect

import demo
from demo import DEMO_PASSWORD

ADMIN = "admin@northwind.example"
LENA, OMAR = "lena.fischer@northwind.example", "omar.haddad@northwind.example"


def _row(walk, email):
    return walk.page.locator("table.users tbody tr").filter(has_text=email)


def test_admin_provisions_from_the_emulated_entra_and_sees_the_users(walk, portal, northwind_sso):
    walk.open_login().click("Use a password instead", role="link").at("Enter your password", "password")
    walk.fill("Username (email)", ADMIN).fill("Password", DEMO_PASSWORD).click("Sign in").at("Welcome", "home")
    walk.open_security().click("Generate token").at("Settings", "provisioning-token")
    tenant_url = walk.page.input_value("#tenant-url")
    token = walk.page.input_value("#secret-token")
    assert tenant_url == portal.url("/scim/v2/")

    # The emulated Entra admin centre: Enterprise applications → the app → Provisioning.
    walk.page.goto(demo.provisioning_page(portal.app))
    walk.at("Sign in as an administrator", "microsoft-admin-sign-in").click("Sign in")
    walk.at("Provisioning", "microsoft-provisioning")
    walk.fill("Tenant URL", tenant_url).fill("Secret Token", token)
    walk.page.get_by_label("Lena Fischer assigned").check()
    walk.page.get_by_label("Omar Haddad assigned").check()
    for group in ("Sales team", "Portal Admins"):
        walk.page.get_by_role("group", name=group).get_by_label("Assigned to the app").check()
    walk.click("Provision now").at("Provisioning", "microsoft-provisioning-after-cycle")
    facts = walk.facts()
    assert facts["Users"] == "2 created, 0 updated, 0 disabled, 0 deleted, 0 unchanged"
    assert facts["Groups"] == "2 created, 0 updated, 0 deleted, 0 unchanged"
    assert facts["Errors"] == "0"
    assert token not in walk.page.content()

    # Back in the portal: the USERS tab lists them before their first sign-in; SECURITY counts them.
    walk.goto("/").at("Welcome", "home").open_users()
    for email in (LENA, OMAR):
        expect(_row(walk, email)).to_contain_text("Provisioned — not signed in yet")
        expect(_row(walk, email)).to_contain_text("Managed by Microsoft Entra")
        expect(_row(walk, email)).to_contain_text("Member")
    walk.click("SECURITY", role="link").at("Settings", "settings-security-provisioned")
    facts = walk.facts()
    assert facts["Provisioned users"] == "2" and facts["Provisioned groups"] == "2"
    assert facts["Entra last called"] != "never"

    # Members of Portal Admins (Omar) are admins from now on.
    walk.page.get_by_label("Members of this group are admins", exact=True).select_option(label="Portal Admins")
    walk.click("Save admin group").at("Settings", "settings-security-admin-group")
    walk.click("USERS", role="link").at("Settings", "settings-users-admin-group")
    expect(_row(walk, OMAR)).to_contain_text("Admin")
    expect(_row(walk, LENA)).to_contain_text("Member")
