"""The walkthroughs under the production configuration, in a browser that sends what Chromium sends.

DEMO_MODE off, https://portal.example.com, the Secure __Host- cookie, HSTS, real-looking Entra settings, and
Microsoft's hosts answered by the emulator on the portal's one outbound session (not demo mode's wiring). Every
form is the page's own (action, CSRF token), and every Referer, Origin and cookie is the one the browser would
send under the Referrer-Policy and cookie flags the portal and Microsoft's pages actually set.
"""
from __future__ import annotations

import json
import re

from browsing import PortalBrowser, may_be_framed
from emulator.transport import WSGIAdapter
from helpers import NORTHWIND_TID, PASSWORD, scim_call

ADMIN = "admin@northwind.example"
MEMBER = "lena.fischer@northwind.example"
SECOND_MEMBER = "omar.haddad@northwind.example"
PORTAL = "https://portal.example.com"
MICROSOFT = "https://login.microsoftonline.com"


def _token_on(page) -> str:
    """The provisioning token a page shows once."""
    return re.search(r'id="secret-token" type="text" readonly value="([^"]+)"', page.text).group(1)


def _generate_token(browser) -> str:
    """The signed-in admin generates the provisioning token on SECURITY; the page shows it once."""
    browser.open("/settings/security")
    return _token_on(browser.submit("Generate token"))


def _connect_entra(portal_app, emulator, token: str, **settings) -> None:
    """Entra's provisioning job (the emulator's) pointed at the portal's Tenant URL with the token."""
    emulator.provisioning_session.mount(PORTAL + "/", WSGIAdapter(portal_app))
    emulator.configure_provisioning(NORTHWIND_TID, tenant_url=PORTAL + "/scim/v2/", token=token, **settings)


def _member_browser(portal_app, emulator) -> PortalBrowser:
    """A second person's browser, on the same portal and Microsoft."""
    return PortalBrowser({"portal.example.com": portal_app, "login.microsoftonline.com": emulator.wsgi}, PORTAL)


def _activate(browser) -> None:
    """The local admin signs in and activates SSO; the browser ends signed out of the portal."""
    browser.sign_in_locally(ADMIN, PASSWORD)
    browser.open("/settings/security")
    assert "Before you continue to Microsoft" in browser.submit("Activate SSO")
    browser.submit("Continue to Microsoft")
    assert browser.page.url.startswith(MICROSOFT + "/"), browser.page.url
    page = browser.at_microsoft(ADMIN)
    assert page.url == PORTAL + "/settings/security" and page.status == 200, page.text[:2000]
    assert "Single sign-on is active. Members now sign in with Microsoft." in browser.flash()
    assert "Status: <strong class=\"status-on\">Active" in page and NORTHWIND_TID in page
    browser.sign_out()


def _posts(browser, path: str):
    return [s for s in browser.sent if s.method == "POST" and s.url == PORTAL + path]


def test_local_sign_in_over_https_with_the_portals_own_headers(prod_browser):
    login = prod_browser.open("/login")
    assert login.status == 200 and login.headers["Referrer-Policy"] == "same-origin"
    assert login.headers["Strict-Transport-Security"].startswith("max-age=31536000")
    assert f"form-action 'self' {MICROSOFT}" in login.headers["Content-Security-Policy"]
    cookie = prod_browser.cookie("__Host-portal_session")
    assert cookie and cookie.secure and cookie.host_only and cookie.path == "/" and cookie.same_site == "lax"

    home = prod_browser.sign_in_locally(ADMIN, PASSWORD)
    assert home.url == PORTAL + "/" and home.status == 200 and "Welcome" in home, home.text[:2000]
    (post,) = _posts(prod_browser, "/login/password")
    # What Chromium sends for a same-origin form under Referrer-Policy: same-origin.
    assert post.headers["Referer"] == PORTAL + "/login" and post.headers["Origin"] == PORTAL
    assert prod_browser.click("Profile").status == 200

    out = prod_browser.sign_out()
    assert out.url == PORTAL + "/login" and "You are signed out." in prod_browser.flash()
    again = prod_browser.open("/profile/")
    assert again.url.startswith(PORTAL + "/login") and "Please sign in to see that page." in prod_browser.flash()


def test_http_is_upgraded_after_hsts(prod_browser):
    prod_browser.open("/login")
    page = prod_browser.goto("http://portal.example.com/login")
    assert page.url == PORTAL + "/login" and prod_browser.sent[-1].url == PORTAL + "/login"


def test_admin_activates_sso_then_a_member_signs_in(prod_browser):
    _activate(prod_browser)
    # Microsoft's redirect to the callback: a cross-site top-level GET, so the Lax cookie goes with it.
    callback = [s for s in prod_browser.sent if s.url.startswith(PORTAL + "/auth/callback")][-1]
    assert callback.status == 303 and "Referer" not in callback.headers
    assert "__Host-portal_session=" in callback.headers["Cookie"]

    prod_browser.open("/login")
    explanation = prod_browser.submit("Continue", fields={"email": MEMBER})
    assert "Before you continue to Microsoft" in explanation and "User.Read" in explanation
    assert "Pick an account" in prod_browser.submit("Continue to Microsoft")
    assert "Permissions requested" in prod_browser.submit("Sign in", radio={"username": MEMBER})
    home = prod_browser.submit("Accept")
    assert home.url == PORTAL + "/" and "Signed in with Microsoft." in prod_browser.flash(), home.text[:2000]
    profile = prod_browser.click("Profile")
    assert "Lena Fischer" in profile and "Sales Manager" in profile and NORTHWIND_TID in profile
    assert "An encrypted copy is stored." in profile


def test_admin_grants_admin_consent_and_a_new_member_is_not_asked(prod_browser):
    _activate(prod_browser)
    prod_browser.sso_sign_in(ADMIN)
    security = prod_browser.open("/settings/security")
    assert "Status: <strong class=\"status-off\">Not confirmed" in security
    prod_browser.submit("Grant admin consent for your organization")
    assert prod_browser.page.url.startswith(MICROSOFT + f"/{NORTHWIND_TID}/v2.0/adminconsent")
    page = prod_browser.at_microsoft(ADMIN)
    assert page.url == PORTAL + "/settings/security", page.text[:2000]
    assert "Admin consent is granted" in prod_browser.flash() and "Status: <strong class=\"status-on\">Granted" in page
    prod_browser.sign_out()

    prod_browser.open("/login")
    went = prod_browser.submit("Continue", fields={"email": SECOND_MEMBER})
    assert went.url.startswith(MICROSOFT + "/"), "no consent explanation once admin consent is recorded"
    home = prod_browser.at_microsoft(SECOND_MEMBER)
    assert home.url == PORTAL + "/" and "Signed in with Microsoft." in prod_browser.flash()
    assert "Omar Haddad" in prod_browser.click("Profile")


def test_require_sso_refuses_passwords_but_not_break_glass(prod_app, prod_browser):
    result = prod_app.test_cli_runner().invoke(
        args=["create-admin", "rescue@northwind.example", "--org", "Northwind Traders", "--password-stdin",
              "--break-glass"], input=PASSWORD + "\n")
    assert result.exit_code == 0, result.output
    _activate(prod_browser)
    prod_browser.sign_in_locally(ADMIN, PASSWORD, password_link=True)
    prod_browser.open("/settings/security")
    saved = prod_browser.submit("Save single sign-on requirement", checks={"require_sso": True})
    assert saved.url == PORTAL + "/settings/security" and "Single sign-on is now required" in prod_browser.flash()
    prod_browser.sign_out()

    refused = prod_browser.sign_in_locally(ADMIN, PASSWORD, password_link=True)
    assert refused.status == 403 and "requires single sign-on" in refused
    rescued = prod_browser.sign_in_locally("rescue@northwind.example", PASSWORD, password_link=True)
    assert rescued.url == PORTAL + "/" and "Welcome" in rescued


def test_sso_sign_out_goes_through_microsoft_and_back(prod_browser):
    _activate(prod_browser)
    assert prod_browser.sso_sign_in(MEMBER).url == PORTAL + "/"
    assert "Sales Manager" in prod_browser.click("Profile")
    out = prod_browser.sign_out()
    assert [s.url.split("?")[0] for s in prod_browser.sent[-3:]] == [
        PORTAL + "/logout", MICROSOFT + "/organizations/oauth2/v2.0/logout", PORTAL + "/login"]
    assert out.url == PORTAL + "/login" and "You are signed out." in prod_browser.flash()
    again = prod_browser.open("/profile/")
    assert again.url.startswith(PORTAL + "/login") and "Sales Manager" not in again


def test_sign_out_at_microsoft_reaches_the_portal_through_a_cookieless_iframe(prod_app, prod_browser):
    _activate(prod_browser)
    assert prod_browser.sso_sign_in(MEMBER).url == PORTAL + "/"
    page = prod_browser.goto(MICROSOFT + "/organizations/oauth2/v2.0/logout")  # as from another Microsoft app
    assert "You signed out of your account" in page
    [frame] = page.frames
    assert frame.url.startswith(PORTAL + "/auth/front-channel-logout?sid=") and "iss=" in frame.url
    assert frame.status == 200 and frame.shown, frame.blocked
    sent = next(s for s in prod_browser.sent if s.url == frame.url)
    assert "Cookie" not in sent.headers and "Referer" not in sent.headers  # third-party: no __Host- cookie
    again = prod_browser.open("/profile/")
    assert again.url.startswith(PORTAL + "/login") and "Sales Manager" not in again
    # Any other portal page in that iframe would not be shown (frame-ancestors 'none', X-Frame-Options DENY).
    login = prod_browser.open("/login")
    assert not may_be_framed(login.headers, login.url, [MICROSOFT + "/organizations/oauth2/v2.0/logout"])


def test_admin_turns_stored_profiles_off_and_on(prod_browser):
    _activate(prod_browser)
    prod_browser.sso_sign_in(MEMBER)
    prod_browser.sign_out()
    prod_browser.sign_in_locally(ADMIN, PASSWORD, password_link=True)
    prod_browser.open("/settings/security")
    off = prod_browser.submit("Save", checks={"store_profiles": False})
    assert off.url == PORTAL + "/settings/security"
    # The admin's copy from activating SSO, and Lena's.
    assert "Profile copies are no longer kept after sign-out; 2 stored copies were deleted." in prod_browser.flash()
    prod_browser.click("Delete all stored copies")
    prod_browser.submit("Delete all stored copies")
    assert "0 stored profile copies were deleted." in prod_browser.flash()
    prod_browser.submit("Save", checks={"store_profiles": True})
    assert "Profile copies are stored, encrypted." in prod_browser.flash()
    prod_browser.sign_out()

    prod_browser.sso_sign_in(MEMBER)
    assert "An encrypted copy is stored." in prod_browser.click("Profile")


def test_member_downloads_then_deletes_their_stored_copy(prod_browser):
    _activate(prod_browser)
    prod_browser.sso_sign_in(MEMBER)
    profile = prod_browser.click("Profile")
    prod_browser.submit("Download my data")
    download = prod_browser.download
    assert download.status == 200 and 'filename="my-portal-data.json"' in download.headers["Content-Disposition"]
    assert "Sales Manager" in json.dumps(json.loads(download.body))
    assert prod_browser.page is profile  # a download leaves the page where it is

    assert "Delete your stored copy?" in prod_browser.click("Delete my stored copy")
    deleted = prod_browser.submit("Delete my stored copy")
    assert deleted.url == PORTAL + "/profile/" and "Your stored copy is deleted." in prod_browser.flash()
    assert "Sales Manager" not in deleted and "No Microsoft profile is stored for you" in deleted


def _evil_site(environ, start_response):
    """Another site with a form aimed at the portal's sign-out."""
    body = (b'<!doctype html><form method="post" action="https://portal.example.com/logout">'
            b'<input type="hidden" name="csrf_token" value="forged"><button type="submit">Win a prize</button></form>')
    start_response("200 OK", [("Content-Type", "text/html")])
    return [body]


def test_a_form_on_another_site_cannot_sign_the_user_out(prod_app, prod_emulator):
    browser = PortalBrowser({"portal.example.com": prod_app, "login.microsoftonline.com": prod_emulator.wsgi,
                             "evil.example": _evil_site}, PORTAL)
    browser.sign_in_locally(ADMIN, PASSWORD)
    browser.goto("https://evil.example/")
    refused = browser.submit("Win a prize")
    sent = browser.sent[-1]
    assert sent.headers["Origin"] == "https://evil.example" and "Cookie" not in sent.headers  # SameSite=Lax
    assert refused.status == 400 and "Form expired" in refused
    assert browser.open("/profile/").status == 200  # still signed in


def test_admin_finds_and_blocks_a_member_on_the_users_tab(prod_app, prod_emulator, prod_browser):
    _activate(prod_browser)
    member = _member_browser(prod_app, prod_emulator)
    assert member.sso_sign_in(MEMBER).url == PORTAL + "/"
    prod_browser.sign_in_locally(ADMIN, PASSWORD, password_link=True)
    prod_browser.open("/settings/users")
    found = prod_browser.submit("Find", fields={"email": MEMBER})
    assert found.url.startswith(PORTAL + "/settings/users?email=") and found.text.count(MEMBER) >= 1
    assert ADMIN + "</td>" not in found
    blocked = prod_browser.submit("Block")
    (post,) = [s for s in prod_browser.sent if s.method == "POST" and s.url.endswith("/block")]
    assert post.headers["Origin"] == PORTAL and post.headers["Referer"].startswith(PORTAL + "/settings/users")
    assert blocked.url == PORTAL + "/settings/users" and "is blocked; 1 session ended." in prod_browser.flash()
    again = member.open("/profile/")
    assert again.url.startswith(PORTAL + "/login") and "Sales Manager" not in again
    refused = member.sso_sign_in(MEMBER)
    assert refused.status == 403 and "Your account is blocked" in refused


def test_admin_turns_user_provisioning_on_entra_provisions_rotates_and_turns_it_off(prod_app, prod_emulator,
                                                                                    prod_browser):
    def valid(token: str) -> bool:
        """Whether Entra's provisioning service gets in with the token (401 otherwise)."""
        resp = scim_call(prod_app.test_client(), token, "GET", "ServiceProviderConfig", base_url=PORTAL)
        assert resp.status_code in (200, 401)
        return resp.status_code == 200

    _activate(prod_browser)
    prod_browser.sign_in_locally(ADMIN, PASSWORD, password_link=True)
    assert "User provisioning (SCIM)" in prod_browser.open("/settings/security")
    shown = prod_browser.submit("Generate token")
    assert shown.url == PORTAL + "/settings/security/provisioning/token" and shown.status == 200
    assert shown.headers["Cache-Control"] == "no-store" and "it will not be shown again" in shown
    assert 'id="tenant-url" type="text" readonly value="https://portal.example.com/scim/v2/"' in shown
    (post,) = _posts(prod_browser, "/settings/security/provisioning/token")
    assert post.headers["Origin"] == PORTAL and post.headers["Referer"] == PORTAL + "/settings/security"
    token = _token_on(shown)
    assert all(token not in s.url for s in prod_browser.sent)
    back = prod_browser.click("Back to SECURITY")
    assert "<code>https://portal.example.com/scim/v2/</code>" in back and token not in back

    # The admin pastes the Tenant URL and token into Entra, which runs a cycle: Lena through the Sales team.
    prod_emulator.provisioning_session.mount(PORTAL + "/", WSGIAdapter(prod_app))
    prod_emulator.configure_provisioning(NORTHWIND_TID, tenant_url=PORTAL + "/scim/v2/", token=token)
    prod_emulator.set_tenant(NORTHWIND_TID, assigned=["8a1b2c3d-0e1f-4a2b-9c3d-4e5f6a7b8c01"])
    summary = prod_emulator.provision(NORTHWIND_TID)
    assert summary["users"]["created"] == 1 and not summary["errors"], summary
    block = prod_browser.open("/settings/security")
    assert "<dt>Provisioned users</dt><dd>1</dd>" in block and "<dt>Provisioned groups</dt><dd>1</dd>" in block
    assert "<dt>Entra last called</dt><dd>never</dd>" not in block
    users = prod_browser.open("/settings/users")
    assert re.search(re.escape(MEMBER) + r"</td>.*?Provisioned — not signed in yet", users.text, re.S)
    member = _member_browser(prod_app, prod_emulator)
    assert member.sso_sign_in(MEMBER).url == PORTAL + "/"
    assert "<dt>Not yet linked to a Microsoft sign-in</dt><dd>0</dd>" in prod_browser.open("/settings/security")

    prod_browser.click("Rotate token…")
    rotated = prod_browser.submit("Rotate token")
    new = _token_on(rotated)
    assert new != token and not valid(token) and valid(new)
    assert prod_emulator.provision(NORTHWIND_TID)["errors"]  # Entra still holds the old token: refused

    prod_browser.open("/settings/security")
    off = prod_browser.submit("Turn off")
    assert off.url == PORTAL + "/settings/security" and "User provisioning is off" in prod_browser.flash()
    assert not valid(new) and "Generate token" in off


def test_entra_default_mappings_provision_link_at_sign_in_and_disabling_keeps_the_member_out(prod_app, prod_emulator,
                                                                                              prod_browser):
    """Attribute mappings left at Entra's defaults (externalId ← mailNickname): one account, governed by Entra."""
    _activate(prod_browser)
    prod_browser.sign_in_locally(ADMIN, PASSWORD, password_link=True)
    token = _generate_token(prod_browser)
    _connect_entra(prod_app, prod_emulator, token, external_id="mailNickname")
    lena_oid = prod_emulator.directory.user_by_upn(MEMBER).oid
    prod_emulator.set_tenant(NORTHWIND_TID, assigned=[lena_oid])
    summary = prod_emulator.provision(NORTHWIND_TID)
    assert summary["users"]["created"] == 1 and not summary["errors"], summary
    assert "<dt>Not yet linked to a Microsoft sign-in</dt><dd>1</dd>" in prod_browser.open("/settings/security")

    member = _member_browser(prod_app, prod_emulator)
    assert member.sso_sign_in(MEMBER).url == PORTAL + "/"
    assert "<dt>Not yet linked to a Microsoft sign-in</dt><dd>0</dd>" in prod_browser.open("/settings/security")
    users = prod_browser.open("/settings/users")
    assert users.text.count(MEMBER + "</td>") == 1  # linked to the provisioned row: no second account
    assert "provisioned user, matched by mail alias (mailNickname)" in prod_browser.open("/settings/audit")

    prod_emulator.set_user_state(lena_oid, "disabled")
    assert prod_emulator.provision(NORTHWIND_TID)["users"]["disabled"] == 1
    again = member.open("/profile/")
    assert again.url.startswith(PORTAL + "/login") and "Sales Manager" not in again
    prod_emulator.set_user_state(lena_oid, "enabled")  # Microsoft would let her in; the portal does not
    refused = member.sso_sign_in(MEMBER)
    assert refused.status == 403 and "Your account is blocked" in refused


def test_a_provisioned_member_whose_external_id_matches_nothing_is_refused_not_duplicated(prod_app, prod_emulator,
                                                                                          prod_browser):
    _activate(prod_browser)
    prod_browser.sign_in_locally(ADMIN, PASSWORD, password_link=True)
    token = _generate_token(prod_browser)
    # externalId mapped from an attribute the sign-in does not carry (an employee number).
    body = {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": MEMBER, "externalId": "E-10442",
            "active": True}
    assert scim_call(prod_app.test_client(), token, "POST", "Users", body, base_url=PORTAL).status_code == 201
    member = _member_browser(prod_app, prod_emulator)
    refused = member.sso_sign_in(MEMBER)
    assert refused.status == 403 and "Your account could not be matched" in refused
    assert "Ask your organisation" in refused and "externalId" in refused
    assert member.open("/profile/").url.startswith(PORTAL + "/login")
    assert prod_browser.open("/settings/users").text.count(MEMBER + "</td>") == 1
    assert "the provisioned account could not be matched" in prod_browser.open("/settings/audit")


def test_a_member_who_signed_in_before_provisioning_is_merged_with_the_account_entra_made(prod_app, prod_emulator,
                                                                                         prod_browser):
    """No profile copies, Entra's default mapping: the portal held neither Lena's email nor her alias, so Entra's
    cycle made a second account; her next sign-in merges it into hers, and disabling her in Entra reaches it."""
    _activate(prod_browser)
    prod_browser.sign_in_locally(ADMIN, PASSWORD, password_link=True)
    prod_browser.open("/settings/security")
    prod_browser.submit("Save", checks={"store_profiles": False})
    member = _member_browser(prod_app, prod_emulator)
    assert member.sso_sign_in(MEMBER).url == PORTAL + "/"  # before provisioning is turned on
    member.sign_out()

    token = _generate_token(prod_browser)
    _connect_entra(prod_app, prod_emulator, token, external_id="mailNickname")
    lena_oid = prod_emulator.directory.user_by_upn(MEMBER).oid
    prod_emulator.set_tenant(NORTHWIND_TID, assigned=[lena_oid])
    assert prod_emulator.provision(NORTHWIND_TID)["users"]["created"] == 1
    assert "<dt>Not yet linked to a Microsoft sign-in</dt><dd>1</dd>" in prod_browser.open("/settings/security")

    assert member.sso_sign_in(MEMBER).url == PORTAL + "/"
    assert "<dt>Not yet linked to a Microsoft sign-in</dt><dd>0</dd>" in prod_browser.open("/settings/security")
    assert prod_browser.open("/settings/users").text.count(MEMBER + "</td>") == 1  # one account
    assert "the account provisioned for them merged into theirs" in prod_browser.open("/settings/audit")

    prod_emulator.set_user_state(lena_oid, "disabled")
    assert prod_emulator.provision(NORTHWIND_TID)["users"]["disabled"] == 1
    assert member.open("/profile/").url.startswith(PORTAL + "/login")  # her session ended
    prod_emulator.set_user_state(lena_oid, "enabled")
    refused = member.sso_sign_in(MEMBER)
    assert refused.status == 403 and "Your account is blocked" in refused
