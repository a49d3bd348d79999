"""Issue 15, item 4 in a real browser (JavaScript off): a sign-out at Microsoft reaches the portal."""
from __future__ import annotations

from tests.browser.steps import Walk

MEMBER = "lena.fischer@northwind.example"


def test_member_signs_out_at_microsoft_and_the_portal_session_ends(walk, northwind_sso, portal):
    walk.sso_sign_in(MEMBER).at("Welcome", "home")
    # Another tab of the same browser signs out of Microsoft (as from any Microsoft app's Sign out): Microsoft's page
    # loads the portal's front-channel logout URL in an iframe.
    microsoft = Walk(walk.page.context.new_page(), portal, walk.auditor)
    with microsoft.page.expect_response(lambda r: "/auth/front-channel-logout?" in r.url) as framed:
        microsoft.page.goto(portal.microsoft_url + "organizations/oauth2/v2.0/logout")
    assert framed.value.status == 200 and "sid=" in framed.value.url
    microsoft.at("You signed out of your account", "microsoft-signed-out")
    microsoft.page.close()

    # The portal tab still shows the home page; the member's next click lands on the sign-in page.
    walk.click("Profile", role="link").at("Sign in", "login")
    assert "Please sign in to see that page." in walk.flash()
