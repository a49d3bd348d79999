"""The walkthroughs of issue 7 in a real browser (JavaScript off); every page reached passes the checks in Walk.at()."""
from __future__ import annotations

import json
import re

from playwright.sync_api import expect

from demo import DEMO_PASSWORD
from helpers import NORTHWIND_TID

ADMIN = "admin@northwind.example"
MEMBER = "lena.fischer@northwind.example"


def test_1_admin_activates_sso(walk, portal):
    walk.sign_in_locally(ADMIN, DEMO_PASSWORD)
    settings = walk.page.get_by_role("link", name="Settings", exact=True)
    box, width = settings.bounding_box(), walk.page.viewport_size["width"]
    assert box["x"] > width / 2 and box["y"] < 120, "Settings is at the top right"
    walk.open_security()
    assert walk.facts() == {} and "Status: Off" in walk.page.inner_text("main")

    walk.click("Activate SSO").at("Before you continue to Microsoft", "consent-explanation-admin")
    text = walk.page.inner_text("main")
    assert "To activate single sign-on for Northwind Traders" in text and "User.Read" in text
    walk.click("Continue to Microsoft").at("Pick an account", "microsoft-sign-in")
    expect(walk.page.get_by_role("radio", name=re.compile("Nadia Okafor"))).to_be_checked()  # login_hint
    walk.click("Sign in").at("Permissions requested", "microsoft-consent")
    expect(walk.page.get_by_label("Consent on behalf of your organization")).to_be_visible()  # an admin
    walk.click("Accept")

    walk.at("Settings", "security-active")
    assert walk.page.url == portal.url("/settings/security")
    assert "Single sign-on is active. Members now sign in with Microsoft." in walk.flash()
    assert "Status: Active" in walk.page.inner_text("main")
    facts = walk.facts()
    assert facts["Microsoft tenant"] == NORTHWIND_TID and facts["Activated by"] == ADMIN
    expect(walk.page.get_by_role("button", name="Deactivate SSO")).to_be_visible()


def test_2_member_signs_in_and_sees_all_basic_claims_and_photo(walk, northwind_sso):
    walk.open_login().enter_email(MEMBER)
    walk.at("Before you continue to Microsoft", "consent-explanation")
    listed = walk.page.locator("ul.claims li").all_inner_texts()
    assert listed == ["Email address", "Name", "Job title", "Company", "Department", "Phone numbers",
                      "Office address", "Preferred language", "Profile image"]
    walk.click("Continue to Microsoft").at_microsoft(MEMBER, consent="accept")

    walk.at("Welcome", "home")
    assert "Signed in with Microsoft." in walk.flash()
    walk.click("Profile", role="link").at("Your profile", "profile")
    facts = walk.facts()
    assert {k: facts[k] for k in ("Name", "Email", "Job title", "Company", "Department", "Phone", "Office",
                                  "Address", "Language", "Tenant id")} == {
        "Name": "Lena Fischer", "Email": MEMBER, "Job title": "Sales Manager", "Company": "Northwind Traders",
        "Department": "Sales", "Phone": "+1 555 0102 · mobile +1 555 0112", "Office": "HQ 3.01",
        "Address": "12 Harbour Road, 98101, Seattle, WA, United States", "Language": "en-US",
        "Tenant id": NORTHWIND_TID}
    photo = walk.page.get_by_role("img", name="Your profile photo")
    expect(photo).to_be_visible()
    assert photo.evaluate("img => img.complete && img.naturalWidth > 0"), "the photo is shown, not a broken image"


def test_4_consent_declined_shows_the_explanation_page(walk, northwind_sso):
    with walk.page.expect_response(lambda r: "/auth/callback" in r.url) as callback:
        walk.sso_sign_in(MEMBER, consent="cancel")
    assert callback.value.status == 403
    walk.at("Consent was declined", "error")
    text = walk.page.inner_text("main")
    assert "You chose not to let the portal read your basic profile" in text and "AADSTS65004" in text
    walk.click("Start signing in again", role="link").at("Sign in", "login")
    walk.goto("/profile/").at("Sign in", "login")  # not signed in: the profile asks for a sign-in
    assert "Please sign in to see that page." in walk.flash()


def test_5_sign_out_then_back_shows_no_personal_data(walk, northwind_sso):
    walk.sso_sign_in(MEMBER).at("Welcome", "home")
    walk.click("Profile", role="link").at("Your profile", "profile")
    assert "Sales Manager" in walk.page.inner_text("main")

    walk.sign_out()
    assert "You are signed out." in walk.flash()
    # A page restored from the back/forward cache fires no load event: wait only for the commit.
    walk.page.go_back(wait_until="commit")
    walk.at("Sign in", "login")
    assert "Sales Manager" not in walk.page.content() and MEMBER not in walk.page.content()
    walk.page.go_forward(wait_until="commit")
    walk.at("Sign in", "signed-out")
    walk.goto("/profile/").at("Sign in", "login")


SECOND_MEMBER = "omar.haddad@northwind.example"


def test_3_admin_grants_admin_consent_and_a_new_member_is_not_asked(walk, northwind_sso):
    walk.sso_sign_in(ADMIN, consent=None).at("Welcome", "home")
    walk.open_security()
    assert "Status: Not confirmed" in walk.page.inner_text("main")
    walk.click("Grant admin consent for your organization")
    if walk.page.get_by_role("heading", name="Sign in as an administrator").count():
        walk.at("Sign in as an administrator", "microsoft-admin-sign-in").click("Sign in")
    walk.at("Permissions requested", "microsoft-admin-consent")
    assert "Accept for your organization" in walk.page.inner_text("main")
    walk.click("Accept")
    walk.page.wait_for_url(lambda url: "/_entra/" not in url)
    walk.at("Settings", "security-admin-consent")
    main = walk.page.inner_text("main")
    assert "Status: Granted" in main and ADMIN in main
    walk.sign_out()

    # A member who never signed in: no consent explanation here, no consent page at Microsoft.
    walk.open_login().enter_email(SECOND_MEMBER)
    assert walk.on_microsoft(), "the portal went straight to Microsoft"
    walk.at_microsoft(SECOND_MEMBER, consent=None)
    walk.at("Welcome", "home")
    walk.click("Profile", role="link").at("Your profile", "profile")
    assert walk.facts()["Name"] == "Omar Haddad"


def test_6_member_downloads_then_deletes_their_stored_copy(walk, northwind_sso):
    walk.sso_sign_in(MEMBER).at("Welcome", "home")
    walk.click("Profile", role="link").at("Your profile", "profile")
    with walk.page.expect_download() as download:
        walk.click("Download my data")
    data = json.loads(open(download.value.path(), encoding="utf-8").read())
    assert download.value.suggested_filename.endswith(".json")
    assert "Lena Fischer" in json.dumps(data, ensure_ascii=False) and "Sales Manager" in json.dumps(data)

    walk.click("Delete my stored copy", role="link").at("Delete your stored copy?", "confirm-delete")
    assert walk.page.url.endswith("/profile/delete"), "no stray ? on the confirmation URL"
    walk.click("Delete my stored copy").at("Your profile", "profile-deleted")
    assert "Your stored copy is deleted." in walk.flash()
    main = walk.page.inner_text("main")
    assert "Sales Manager" not in main and "No Microsoft profile is stored for you" in main
    assert "Email" not in walk.facts() and walk.page.get_by_text("Delete my stored copy").count() == 0
    assert walk.page.get_by_role("img", name="Your profile photo").count() == 0
