"""Settings → USERS in a real browser (JavaScript off; every page passes the checks in Walk.at())."""
from __future__ import annotations

import re

from playwright.sync_api import expect

from demo import DEMO_PASSWORD
from tests.browser.conftest import new_walk

ADMIN = "admin@northwind.example"
MEMBER = "lena.fischer@northwind.example"


def _admin_signed_in(walk):
    """SSO is active: the local admin takes "Use a password instead"."""
    walk.open_login().click("Use a password instead", role="link").at("Enter your password", "password")
    walk.fill("Username (email)", ADMIN).fill("Password", DEMO_PASSWORD).click("Sign in").at("Welcome", "home")
    return walk.open_users()


def _member_signed_in(browser, portal, auditor):
    member = new_walk(browser, portal, auditor)
    member.sso_sign_in(MEMBER).at("Welcome", "home")
    expect(member.page.get_by_role("link", name="Settings", exact=True)).to_have_count(0)
    return member


def test_admin_promotes_a_member_who_then_sees_settings(walk, browser, portal, auditor, northwind_sso):
    member = _member_signed_in(browser, portal, auditor)
    try:
        _admin_signed_in(walk)
        row = walk.page.locator("table.users tbody tr").filter(has_text=MEMBER)
        expect(row).to_contain_text("Member")
        expect(row).to_contain_text("Microsoft")
        expect(row).to_contain_text("Active")
        walk.user_action(MEMBER, "Make admin")
        assert any("is now an admin" in f for f in walk.flash())
        expect(row).to_contain_text("Admin")

        member.click("Profile", role="link").at("Your profile", "profile")
        member.click("Settings", role="link").at("Settings", "settings-general")
        member.click("USERS", role="link").at("Settings", "settings-users")
    finally:
        member.page.context.close()


def test_admin_blocks_a_member_whose_next_click_lands_on_sign_in(walk, browser, portal, auditor, northwind_sso):
    member = _member_signed_in(browser, portal, auditor)
    try:
        _admin_signed_in(walk)
        walk.user_action(MEMBER, "Block")
        assert any("is blocked" in f for f in walk.flash())
        expect(walk.page.locator("table.users tbody tr").filter(has_text=MEMBER)).to_contain_text("Blocked")

        member.click("Profile", role="link")
        member.page.wait_for_url(re.compile(r"/login"))
        member.at("Sign in", "login")
        # Signing in again with Microsoft is refused with a page that says whom to ask.
        member.sso_sign_in(MEMBER, signed_in=True, consent=None)
        member.at("Your account is blocked", "blocked")
        assert "administrator" in member.page.inner_text("main")
    finally:
        member.page.context.close()
