"""Issue 18 in a real browser (JavaScript off, every page checked by Walk.at): the demo opened at localhost,
input errors on the same form, and the AUDIT LOG tab in a 360 px window."""
from __future__ import annotations

from playwright.sync_api import expect

from demo import DEMO_PASSWORD

ADMIN = "admin@northwind.example"
MEMBER = "lena.fischer@northwind.example"


def test_demo_opened_at_localhost_signs_in_with_microsoft(walk, northwind_sso):
    port = walk.portal.server.server_port
    walk.page.goto(f"http://localhost:{port}/login?next=/profile/")
    assert walk.page.url == walk.portal.url("/login?next=/profile/"), "sent on to the demo's SERVER_NAME"
    walk.at("Sign in", "login-from-localhost")
    walk.enter_email(MEMBER).continue_to_microsoft()  # the hop that form-action 'self' used to block
    walk.at_microsoft(MEMBER).at("Your profile", "profile")
    assert "Sales Manager" in walk.page.inner_text("main")


def _email_error(walk) -> str:
    field = walk.page.get_by_label("Username (email)", exact=True)
    alert = walk.page.get_by_role("alert")
    expect(alert).to_be_visible()
    assert field.get_attribute("aria-invalid") == "true"
    assert field.get_attribute("aria-describedby") == alert.get_attribute("id")
    return alert.inner_text()


def test_input_errors_are_shown_on_the_same_form_with_what_was_typed(walk, portal):
    walk.open_login()
    for typed in ("not an email", "@@@"):
        walk.enter_email(typed).at("Sign in", "login-invalid-email")
        assert _email_error(walk) == "Enter an email address like name@example.com."
        expect(walk.page.get_by_label("Username (email)", exact=True)).to_have_value(typed)
    walk.enter_email("").at("Sign in", "login-empty-email")
    assert _email_error(walk) == "Enter your email address."
    walk.enter_email(ADMIN).at("Enter your password", "password")  # corrected on the same form, it goes on

    walk.goto("/login/password").at("Enter your password", "password-direct")
    walk.fill("Username (email)", "@@@").fill("Password", DEMO_PASSWORD).click("Sign in")
    walk.at("Enter your password", "password-invalid-email")
    assert _email_error(walk) == "Enter an email address like name@example.com."
    expect(walk.page.get_by_label("Username (email)", exact=True)).to_have_value("@@@")
    expect(walk.page.get_by_label("Username (email)", exact=True)).to_be_editable()
    walk.fill("Username (email)", ADMIN).fill("Password", DEMO_PASSWORD).click("Sign in").at("Welcome", "home")


def test_audit_log_tab_is_readable_at_360_px(narrow_walk, northwind_sso):
    walk = narrow_walk
    walk.goto("/login/password").at("Enter your password", "password")  # SSO is active; the admin is break-glass
    walk.fill("Username (email)", ADMIN).fill("Password", DEMO_PASSWORD).click("Sign in").at("Welcome", "home")
    walk.click("Settings", role="link").at("Settings", "settings-general")
    walk.click("AUDIT LOG", role="link").at("Settings", "settings-audit")
    actors = walk.page.locator('td[data-label="Actor"]')
    assert actors.count() >= 3
    for i in range(actors.count()):
        cell = actors.nth(i)
        box = cell.bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 360, "the actor column is on screen"
        assert cell.evaluate("el => el.scrollWidth <= el.clientWidth"), "and not clipped"
    assert ADMIN in actors.first.inner_text()
    walk.click("SECURITY", role="link").at("Settings", "settings-security")
    assert walk.page.locator("table").count() == 0, "the SECURITY tab no longer carries the log"
