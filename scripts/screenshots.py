"""Save PNGs of the key pages into docs/screenshots/, walking the demo the way the browser tests do.

Run from the repository root: .venv/bin/python -m scripts.screenshots   (needs /usr/bin/chromium)
"""
from __future__ import annotations

import os
import sys
import tempfile

from playwright.sync_api import Page, sync_playwright

from demo import DEMO_PASSWORD
from tests.helpers import NORTHWIND_TID
from tests.browser.live import LivePortal, launch_chromium
from tests.browser.steps import Walk

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

OUT = os.path.join(ROOT, "docs", "screenshots")
ADMIN = "admin@northwind.example"
MEMBER = "lena.fischer@northwind.example"
# Page key (as named by Walk.at) → file; the first visit of each key is the one kept.
PAGES = {
    "login": "01-login-prompt.png",
    "password": "02-password-step.png",
    "settings-security": "03-security-off.png",
    "consent-explanation-admin": "04-consent-explanation.png",
    "microsoft-sign-in": "05-microsoft-sign-in.png",
    "microsoft-consent": "06-microsoft-consent.png",
    "security-active": "07-security-active.png",
    "profile": "08-profile.png",
    "error": "09-consent-declined.png",
    "profile-360": "10-profile-360px.png",
    "microsoft-admin-consent": "11-microsoft-admin-consent.png",
    "security-admin-consent": "12-security-admin-consent.png",
    "settings-audit": "13-audit-log.png",
    "audit-360": "14-audit-log-360px.png",
    "login-invalid-email": "15-login-inline-error.png",
    "settings-users": "16-users.png",
    "provisioning-token": "17-provisioning-token.png",
    "security-provisioning": "18-security-provisioning.png",
}
# Keys shot as one element rather than the whole page (the SECURITY tab is long).
ELEMENTS = {"security-provisioning": "#provisioning"}


def provision(walk: Walk, portal: LivePortal) -> None:
    """SECURITY → Generate token; Entra (the emulator) provisions the Sales team and Operations with it; the block
    after the cycle, with Operations as the admin group."""
    walk.click("SECURITY", role="link").at("Settings", "settings-security")
    walk.click("Generate token").at("Settings", "provisioning-token")
    tenant_url = walk.page.get_by_label("Tenant URL", exact=True).input_value()
    token = walk.page.get_by_label("Secret Token", exact=True).input_value()
    emulator = portal.emulator
    emulator.configure_provisioning(NORTHWIND_TID, tenant_url=tenant_url, token=token)
    emulator.set_tenant(NORTHWIND_TID, assigned=[g.id for g in emulator.directory.tenant(NORTHWIND_TID).groups])
    emulator.provision(NORTHWIND_TID)  # over HTTP to the live portal, as Entra calls the Tenant URL
    walk.goto("/settings/security").at("Settings", "settings-security")
    walk.page.get_by_label("Members of this group are admins").select_option(label="Operations")
    walk.click("Save admin group").at("Settings", "security-provisioning")


def main() -> None:
    os.makedirs(OUT, exist_ok=True)
    saved: set[str] = set()

    def shoot(key: str, page: Page) -> None:
        if key in PAGES and key not in saved:
            if key in ELEMENTS:
                page.locator(ELEMENTS[key]).screenshot(path=os.path.join(OUT, PAGES[key]))
            else:
                page.screenshot(path=os.path.join(OUT, PAGES[key]), full_page=True)
            saved.add(key)
            print("saved", PAGES[key])

    with tempfile.TemporaryDirectory() as instance, LivePortal(instance) as portal, sync_playwright() as pw:
        browser = launch_chromium(pw)
        desktop = browser.new_context(viewport={"width": 1024, "height": 640}, java_script_enabled=False)
        walk = Walk(desktop.new_page(), portal, on_arrive=shoot)
        walk.open_login().enter_email("not an email").at("Sign in", "login-invalid-email")
        walk.sign_in_locally(ADMIN, DEMO_PASSWORD).open_security()
        walk.activate_sso(ADMIN).at("Settings", "security-active")
        walk.sign_out()
        walk.sso_sign_in(MEMBER).at("Welcome", "home")
        walk.click("Profile", role="link").at("Your profile", "profile")
        walk.sign_out()
        walk.sso_sign_in("omar.haddad@northwind.example", consent="cancel").at("Consent was declined", "error")

        phone = browser.new_context(viewport={"width": 360, "height": 740}, java_script_enabled=False)
        walk = Walk(phone.new_page(), portal, on_arrive=shoot)
        walk.sso_sign_in(MEMBER, consent=None).at("Welcome", "home")
        walk.click("Profile", role="link").at("Your profile", "profile-360")

        admin = browser.new_context(viewport={"width": 1024, "height": 640}, java_script_enabled=False)
        walk = Walk(admin.new_page(), portal, on_arrive=shoot)
        walk.sso_sign_in(ADMIN, consent=None).at("Welcome", "home")
        walk.open_security().click("Grant admin consent for your organization")
        walk.at("Permissions requested", "microsoft-admin-consent").click("Accept")
        walk.page.wait_for_url(lambda url: "/_entra/" not in url)
        walk.at("Settings", "security-admin-consent")
        walk.click("AUDIT LOG", role="link").at("Settings", "settings-audit")
        walk.click("USERS", role="link").at("Settings", "settings-users")
        provision(walk, portal)

        admin_phone = browser.new_context(viewport={"width": 360, "height": 740}, java_script_enabled=False)
        walk = Walk(admin_phone.new_page(), portal, on_arrive=shoot)
        walk.sso_sign_in(ADMIN, explanation=False, consent=None).at("Welcome", "home")
        walk.click("Settings", role="link").at("Settings", "settings-general")
        walk.click("AUDIT LOG", role="link").at("Settings", "audit-360")
        browser.close()
    missing = set(PAGES) - saved
    if missing:
        sys.exit("not reached: " + ", ".join(sorted(missing)))


if __name__ == "__main__":
    main()
