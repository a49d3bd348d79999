"""Turning user provisioning on in Chromium (JavaScript off, every page checked by Walk.at()): generate the
token, paste it with the Tenant URL into the emulated Entra's Provisioning page, run a cycle, then the SECURITY
block, the USERS tab and the admin group after it."""
from __future__ import annotations

from playwright.sync_api import expect

from demo import DEMO_PASSWORD
from helpers import NORTHWIND_TID

ADMIN = "admin@northwind.example"
LENA = "lena.fischer@northwind.example"


def _entra_provisioning_page(walk, portal, *, signed_in: bool = False) -> None:
    """The emulated Entra admin centre: Enterprise applications → the app → Provisioning (a tenant admin)."""
    client_id = portal.app.config["ENTRA_CLIENT_ID"]
    walk.page.goto(portal.microsoft_url + f"{NORTHWIND_TID}/enterprise-applications/{client_id}/provisioning")
    if not signed_in:
        walk.at("Sign in as an administrator", "microsoft-admin-sign-in").click("Sign in")
    walk.at("Provisioning", "microsoft-provisioning")


def test_admin_turns_provisioning_on_and_sees_the_block_after_a_cycle(walk, portal, northwind_sso):
    walk.open_login().click("Use a password instead", role="link").at("Enter your password", "password")
    walk.fill("Username (email)", ADMIN).fill("Password", DEMO_PASSWORD).click("Sign in").at("Welcome", "home")
    walk.open_security()
    block = walk.page.locator("#provisioning")
    expect(block).to_contain_text("Status: Off")
    walk.click("Generate token").at("Settings", "provisioning-token")
    assert "it will not be shown again" in walk.page.inner_text("main")
    tenant_url = walk.page.get_by_label("Tenant URL", exact=True).input_value()
    token = walk.page.get_by_label("Secret Token", exact=True).input_value()
    assert tenant_url == portal.url("/scim/v2/") and len(token) >= 64
    assert token not in walk.page.url

    # In Entra: paste both, assign Lena and the Sales team, Provision now.
    _entra_provisioning_page(walk, portal)
    walk.fill("Tenant URL", tenant_url).fill("Secret Token", token)
    walk.page.get_by_label("Lena Fischer assigned").check()
    walk.page.get_by_role("group", name="Sales team").get_by_label("Assigned to the app").check()
    walk.click("Provision now").at("Provisioning", "microsoft-provisioning-after-cycle")
    facts = walk.facts()
    assert facts["Users"].startswith("1 created") and facts["Errors"] == "0", facts

    walk.goto("/settings/security").at("Settings", "security-provisioning")
    facts = walk.facts()
    assert facts["Tenant URL"] == tenant_url and facts["Entra last called"] != "never"
    assert (facts["Provisioned users"], facts["Provisioned groups"]) == ("1", "1")
    assert facts["Not yet linked to a Microsoft sign-in"] == "1"
    assert token not in walk.page.content()
    # The admin group: a select without JavaScript, saved with its button.
    walk.page.get_by_label("Members of this group are admins").select_option(label="Sales team")
    walk.click("Save admin group").at("Settings", "security-admin-group")
    assert any("Members of the group Sales team are admins now" in f for f in walk.flash())
    assert walk.page.locator("#scim-admin-group option:checked").inner_text() == "Sales team"

    walk.click("USERS", role="link").at("Settings", "users-provisioned")
    row = walk.page.locator("table.users tbody tr").filter(has_text=LENA)
    expect(row).to_contain_text("Provisioned — not signed in yet")
    expect(row).to_contain_text("Managed by Microsoft Entra")
    expect(row).to_contain_text("Admin")  # a member of the admin group

    # Rotating asks first; the old token stops working, so Entra's next cycle fails until the new one is pasted.
    walk.goto("/settings/security").at("Settings", "settings-security")
    walk.click("Rotate token…", role="link").at("Settings", "confirm-rotate")
    walk.click("Rotate token").at("Settings", "provisioning-token-rotated")
    assert walk.page.get_by_label("Secret Token", exact=True).input_value() != token
    _entra_provisioning_page(walk, portal, signed_in=True)
    walk.click("Provision now").at("Provisioning", "microsoft-provisioning-refused")
    assert walk.facts()["Errors"] != "0"
