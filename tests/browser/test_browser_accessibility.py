"""Keyboard-only use, visible focus and a 360 px window; axe-core runs on every page reached (Walk.at)."""
from __future__ import annotations

import re

from demo import DEMO_PASSWORD

MEMBER = "lena.fischer@northwind.example"


def _focused_id(walk) -> str:
    return walk.page.evaluate("() => document.activeElement.id")


def test_member_flow_by_keyboard_alone_in_a_360_px_window(narrow_walk, northwind_sso):
    walk, keys = narrow_walk, narrow_walk.page.keyboard
    walk.open_login()
    assert _focused_id(walk) == "email", "the login prompt puts the caret in the email field"
    keys.type(MEMBER)
    walk.tab_to("^Continue$")
    keys.press("Enter")

    walk.at("Before you continue to Microsoft", "consent-explanation")
    walk.tab_to("^Continue to Microsoft$")
    keys.press("Enter")

    walk.at("Pick an account", "microsoft-sign-in")
    walk.tab_to("Lena Fischer")  # the radio group's stop is the account Microsoft was given as login_hint
    assert walk.page.evaluate("() => document.activeElement.checked")
    walk.tab_to("^Sign in$")
    keys.press("Enter")

    walk.at("Permissions requested", "microsoft-consent")
    walk.tab_to("^Accept$")
    keys.press("Enter")

    walk.at("Welcome", "home")
    walk.tab_to("^Profile$")
    keys.press("Enter")
    walk.at("Your profile", "profile")
    assert "Sales Manager" in walk.page.inner_text("main")

    walk.tab_to("^Sign out$")
    keys.press("Enter")
    walk.page.wait_for_url(re.compile(r"/login"))
    walk.at("Sign in", "signed-out")


def test_skip_link_is_the_first_stop_and_shows_itself(walk):
    walk.goto("/login/password").at("Enter your password", "password")
    walk.page.keyboard.press("Tab")
    skip = walk.page.get_by_role("link", name="Skip to content")
    assert walk.page.evaluate("() => document.activeElement.textContent") == "Skip to content"
    box = skip.bounding_box()
    assert box["x"] >= 0 and box["y"] >= 0, "the focused skip link is on screen"
    walk.page.keyboard.press("Enter")
    # The jump is a same-document navigation, which may land after press() returns: wait for it (or time out).
    walk.page.wait_for_function("() => location.hash === '#main'", timeout=5000)
    walk.page.keyboard.press("Tab")
    assert _focused_id(walk) == "email", "the next stop is the page's first field, not the header's links"


def test_a_wrong_password_is_announced_next_to_the_field(walk):
    walk.open_login().enter_email("admin@northwind.example").at("Enter your password", "password")
    walk.fill("Password", DEMO_PASSWORD + "-wrong").click("Sign in")
    walk.at("Enter your password", "password-wrong")
    alert = walk.page.get_by_role("alert")
    field = walk.page.get_by_label("Password", exact=True)
    assert alert.is_visible() and field.get_attribute("aria-invalid") == "true"
    assert field.get_attribute("aria-describedby") == alert.get_attribute("id")


def test_error_pages_pass_the_same_checks(walk):
    response = walk.page.goto(walk.portal.url("/no-such-page"))
    assert response.status == 404
    walk.at("Not Found", "error")
    walk.goto("/settings/security")  # signed out: asked to sign in first
    walk.at("Sign in", "login")
